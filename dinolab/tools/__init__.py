"""Tools around a trained backbone: export it, look at what it attends to.

* :mod:`~dinolab.tools.export`: ``dinolab export``, a checkpoint's backbone as a plain state
  dict and as safetensors (dinolab's or timm's key layout), and :func:`load_exported`;
* :mod:`~dinolab.tools.visualize`: ``dinolab visualize attention|pca``, official DINO's
  attention maps and DINOv2's PCA colours of the patch features, written as PNGs;
* :mod:`~dinolab.tools.loading`: the checkpoint reading they share.

They sit on top of the library (models, eval) and import downwards only.
"""

from dinolab.tools.loading import read_backbone

__all__ = ["read_backbone"]
