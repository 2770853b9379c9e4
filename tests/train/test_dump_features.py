"""``dinolab eval knn --dump_features DIR``: official eval_knn.py's four files, same features."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.data import DataLoader

from dinolab.cli import main
from dinolab.eval import extract_features, knn_accuracy
from dinolab.models import load_backbone
from dinolab.train.course_teacher import COURSE_TEACHER_PATH
from dinolab.train.recipes.common import SSLConfig, build_ssl_data

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_dumped_features_are_extract_features_of_the_evaluated_sets(tmp_path, capsys):
    dump = tmp_path / "features"
    argv = ["eval", "knn", "--pretrained_weights", str(COURSE_TEACHER_PATH), "--num_images", "60",
            "--num_eval_images", "30", "--nb_knn", "5", "--progress", "false", "--device", "cpu",
            "--dump_features", str(dump)]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["dump_features"] == str(dump)
    files = {n: torch.load(dump / f"{n}.pth", weights_only=True)
             for n in ("trainfeat", "testfeat", "trainlabels", "testlabels")}
    assert files["trainfeat"].shape == (60, 96) and files["testfeat"].shape == (30, 96)
    assert files["trainlabels"].dtype == torch.int64 and files["testlabels"].shape == (30,)

    # The same sets built independently: the course teacher's shapes (data seed 0), 32 px.
    data = build_ssl_data(SSLConfig(num_images=60, num_eval_images=30, shapes_style="dark_fixed",
                                    seed=0, global_crops_size=32, local_crops_size=16))
    backbone = load_backbone(COURSE_TEACHER_PATH)
    for split, dataset in (("train", data.knn_train), ("test", data.knn_test)):
        feats, labels = extract_features(backbone, DataLoader(dataset, batch_size=16),
                                         progress=False)
        torch.testing.assert_close(files[f"{split}feat"], feats, rtol=0, atol=1e-6)
        assert torch.equal(files[f"{split}labels"], labels)
    # ... and the reported accuracy is the k-NN of the dumped features.
    acc = knn_accuracy(files["trainfeat"], files["trainlabels"], files["testfeat"],
                       files["testlabels"], data.num_classes, k=5, T=0.07)
    assert result["knn_top1"]["5"] == pytest.approx(100.0 * acc)


def test_dump_features_is_a_knn_flag_and_a_file_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["eval", "linear", "--dump_features", str(tmp_path)])
    assert stop.value.code == 2
    assert "unrecognized arguments: --dump_features" in capsys.readouterr().err
    (tmp_path / "afile").write_text("")
    code = main(["eval", "knn", "--pretrained_weights", str(COURSE_TEACHER_PATH),
                 "--dump_features", str(tmp_path / "afile"), "--progress", "false"])
    assert code == 2
    assert f"--dump_features '{tmp_path / 'afile'}' is a file" in capsys.readouterr().err
