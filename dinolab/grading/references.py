"""Refuse answers that call dinolab's own implementation of what the exercise asks for.

Learners have the library: ``return dinolab.losses.byol_loss(p, z)`` would match the
reference exactly and earn every point while teaching nothing. Before an exercise's checks
run, the grader reads the learner's solution cell (its source, never by running it) and looks
for a use of a *reference*: the dinolab object the checks compare with.

Which objects are references for an exercise:

* every dinolab object named like a function or class the solution cell defines
  (``def byol_loss`` forbids ``dinolab.losses.byol_loss``, wherever dinolab re-exports it);
* the objects listed in :data:`EXTRA_REFERENCES` for the exercise (the reference has another
  name: ``SimpleStudentTeacher`` forbids ``StudentTeacherWrapper`` and ``ema_update``).

A use is any expression in the solution cell that names such an object, through:

* imports and aliases, in the solution cell or in any earlier cell (the set-up cells' own
  ``import dinolab.losses as reference`` included): ``from dinolab.losses import byol_loss as
  f``, ``import dinolab.losses as L; L.byol_loss``, ``f = L.byol_loss``, star imports;
* attribute access at any depth (``reference.DINOLoss.update_center``), subclassing, default
  arguments;
* ``getattr(module, "name")`` with a name built from constants (``"byol" + "_loss"``, an
  f-string of constants, a variable assigned a constant string), ``vars(module)["name"]``,
  ``module.__dict__["name"]``, ``importlib.import_module("dinolab.losses")``,
  ``__import__("dinolab.losses", fromlist=...)``, ``sys.modules["dinolab.losses"]``;
* ``eval`` / ``exec`` of a constant string, ``globals()["reference"]``;
* a function of an earlier cell that itself uses a reference (a helper that wraps it), or
  that is the reference (the set-up's ``reference_step``, listed in :data:`EXTRA_REFERENCES`).

What it does not catch (a static reading cannot know these): names and code strings computed
at run time (from parameters, input, loops), objects reached through other objects (a model
whose attribute holds the reference), dinolab functions that call the reference internally,
code in a separate ``.py`` file the notebook imports, and a copy of the library's source pasted
in. The hidden checks and the instructor remain the judge of those. (Watching calls at run time
instead would refuse honest answers: some checks hand the reference to the learner's code, as
exercise 4.3 hands its ``train_step`` a ``DINOLoss``.)

Examples:
    >>> uses = find_reference_uses(
    ...     "def byol_loss(p, z):\\n    return L.byol_loss(p, z)\\n",
    ...     context=["import dinolab.losses as L"], forbidden={"byol_loss"})
    >>> [(u.name, u.line) for u in uses]
    [('dinolab.losses.byol_loss', 2)]
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "EXTRA_REFERENCES",
    "ReferenceUse",
    "defined_names",
    "find_reference_uses",
    "forbidden_names",
    "refusal_message",
    "reference_problem",
]

EXTRA_REFERENCES: dict[str, dict[str, frozenset[str]]] = {
    "01_3_contrastive_vs_distillation": {
        "simclr_loss": frozenset({"info_nce", "nt_xent"}),
        "kd_loss": frozenset({"DistillKL"}),
        "dino_loss": frozenset({"DINOLoss"}),
    },
    "02_backbones": {
        "patch_embed": frozenset({"PatchEmbed"}),
        "self_attention": frozenset({"Attention"}),
    },
    "03_1_student_teacher": {
        "SimpleStudentTeacher": frozenset({"StudentTeacherWrapper", "ema_update", "EMAUpdater"}),
        "cosine_momentum_schedule": frozenset({"cosine_schedule", "momentum_schedule"}),
        "linear_momentum_schedule": frozenset({"linear_schedule"}),
        "track_parameter_divergence": frozenset({"parameter_divergence"}),
    },
    "03_2_multicrop": {
        "MultiCrop": frozenset({"MultiCropAugmentation"}),
        "collate_multicrop": frozenset({"multicrop_collate"}),
    },
    "03_3_projection_heads": {
        "ProjectionHead": frozenset({"DINOHead"}),
    },
    "04_1_centering": {
        "centered_teacher_probs": frozenset({"DINOLoss", "teacher_probs"}),
        "update_center": frozenset({"DINOLoss"}),
    },
    "04_2_sharpening": {
        "entropy": frozenset({"teacher_entropy"}),
        "teacher_temperature_schedule": frozenset({"teacher_temp_schedule",
                                                   "teacher_temp_schedule_per_iter"}),
    },
    "04_3_dino_loss_and_training_loop": {
        "DINOLoss": frozenset({"DINOLoss"}),
        # the set-up's reference_step is the reference; the EMA (exercise 3.1) may be reused
        "train_step": frozenset({"DINOLoss", "Engine", "reference_step"}),
    },
    "05_knowledge_distillation": {
        "DistillKL": frozenset({"kd_loss"}),
        "ModelEMA": frozenset({"ema_update", "EMAUpdater"}),
    },
    "06_distilling_a_frozen_teacher": {
        "koleo_loss": frozenset({"KoLeoLoss"}),
        "ibot_patch_loss": frozenset({"iBOTPatchLoss"}),
    },
    # the capstone assembles dinolab's pieces (ViT, DINOHead, DINOLoss, ema_update, photos);
    # only the library's version of each whole part is refused
    "07_capstone": {
        "train_dino": frozenset({"Engine", "DINOTask"}),
        "cls_attention_maps": frozenset({"cls_attention", "cls_to_patch_attention"}),
        "knn_predict": frozenset({"knn_classify", "knn_votes", "knn_accuracy", "knn_evaluate"}),
    },
}
"""assignment -> exercise (solution cell ``grade_id``) -> names of further dinolab objects its
answer may not use, beyond those named like what the solution cell defines."""

_PACKAGE = "dinolab"
_EARLIER = "<earlier cell>"  # prefix of a forbidden function defined in an earlier cell
# dinolab's module and package names: a learner's function called `train` or `data` must not
# make all of dinolab.train or dinolab.data a reference (an extra reference still may).
_MODULES = frozenset(
    p.stem for p in Path(__file__).resolve().parents[1].rglob("*")
    if (p.suffix == ".py" or p.is_dir()) and not p.name.startswith(("_", "."))
)


@dataclass(frozen=True)
class ReferenceUse:
    """One place where the solution cell names a reference.

    Attributes:
        name: the dinolab object as resolved, e.g. ``"dinolab.losses.byol_loss"``.
        line: line of the solution cell (1-based).
        code: that line, stripped.
    """

    name: str
    line: int
    code: str


def defined_names(source: str) -> set[str]:
    """Functions and classes the cell defines at its top level (``set()`` if it does not parse)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return set()
    return {n.name for n in tree.body
            if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)}


def forbidden_names(assignment: str, exercise: str, solution_source: str) -> set[str]:
    """Names of the dinolab objects the answer to ``exercise`` may not use."""
    extra = EXTRA_REFERENCES.get(assignment, {}).get(exercise, frozenset())
    return (defined_names(solution_source) - _MODULES) | set(extra)


def _const_str(node: ast.AST, strings: dict[str, str]) -> str | None:
    """The value of a string expression built from constants, or None."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name) and node.id in strings:
        return strings[node.id]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _const_str(node.left, strings), _const_str(node.right, strings)
        return None if left is None or right is None else left + right
    if isinstance(node, ast.JoinedStr):
        parts = []
        for value in node.values:
            if isinstance(value, ast.FormattedValue):
                if value.format_spec is not None or value.conversion not in (-1, 115):
                    return None
                part = _const_str(value.value, strings)
            else:
                part = _const_str(value, strings)
            if part is None:
                return None
            parts.append(part)
        return "".join(parts)
    return None


class _Reader(ast.NodeVisitor):
    """Walks cells in order, tracking which names stand for which dinolab objects."""

    def __init__(self, forbidden: set[str]) -> None:
        self.forbidden = forbidden
        self.env: dict[str, str] = {}       # name -> dotted path ("dinolab.losses", "sys", ...)
        self.strings: dict[str, str] = {}   # name -> constant string assigned to it
        self.uses: list[tuple[str, ast.AST]] = []
        self.recording = False

    # -- resolving expressions -------------------------------------------------------------

    def resolve(self, node: ast.AST) -> str | None:
        """Dotted path an expression stands for (dinolab, sys, importlib objects), or None."""
        if isinstance(node, ast.Name):
            return self.env.get(node.id)
        if isinstance(node, ast.Attribute):
            base = self.resolve(node.value)
            if base is None:
                return None
            if node.attr == "__dict__":
                return base + ".__dict__"
            return f"{base}.{node.attr}"
        if isinstance(node, ast.Subscript):
            base = self.resolve(node.value)
            key = _const_str(node.slice, self.strings)
            if key is not None and self._builtin(node.value, "globals", "locals", "vars"):
                return self.env.get(key)  # globals()["reference"]
            if base is None or key is None:
                return None
            if base == "sys.modules":
                return key
            if base.endswith(".__dict__") or base.startswith("vars("):
                return f"{base.removesuffix('.__dict__').removeprefix('vars(')}.{key}"
            return None
        if isinstance(node, ast.Call):
            return self._resolve_call(node)
        if isinstance(node, ast.NamedExpr):
            return self.resolve(node.value)
        return None

    def _resolve_call(self, node: ast.Call) -> str | None:
        func = node.func
        name = func.id if isinstance(func, ast.Name) and func.id not in self.env else None
        target = self.resolve(func)
        args = node.args
        if name == "eval" and args:
            code = _const_str(args[0], self.strings)
            try:
                expression = ast.parse(code, mode="eval") if code is not None else None
            except SyntaxError:
                expression = None
            return self.resolve(expression.body) if expression is not None else None
        if name == "getattr" and len(args) >= 2:
            base, attr = self.resolve(args[0]), _const_str(args[1], self.strings)
            return None if base is None or attr is None else f"{base}.{attr}"
        if name == "vars" and len(args) == 1:
            base = self.resolve(args[0])
            return None if base is None else f"vars({base}"
        if name == "__import__" and args:
            module = _const_str(args[0], self.strings)
            if module is None:
                return None
            fromlist = len(args) >= 4 or any(k.arg == "fromlist" for k in node.keywords)
            return module if fromlist else module.split(".")[0]
        if target in ("importlib.import_module", "sys.modules.get") and args:
            return _const_str(args[0], self.strings)
        if target is not None and target.endswith(".__dict__.get") and args:
            key = _const_str(args[0], self.strings)
            return None if key is None else f"{target.removesuffix('.__dict__.get')}.{key}"
        return None

    def _builtin(self, node: ast.AST, *names: str) -> bool:
        """``node`` is a call without arguments of one of the builtins ``names``."""
        return (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id in names and node.func.id not in self.env and not node.args)

    def _forbidden_path(self, path: str | None) -> bool:
        if path is not None and path.startswith(_EARLIER + "."):
            return True
        if not path or not (path == _PACKAGE or path.startswith(_PACKAGE + ".")):
            return False
        return any(part in self.forbidden for part in path.split(".")[1:])

    # -- binding names ---------------------------------------------------------------------

    def _bind(self, target: ast.AST, value: ast.AST | None) -> None:
        if isinstance(target, ast.Name):
            path = self.resolve(value) if value is not None else None
            string = _const_str(value, self.strings) if value is not None else None
            self.env.pop(target.id, None)
            self.strings.pop(target.id, None)
            if path is not None:
                self.env[target.id] = path
            if string is not None:
                self.strings[target.id] = string
        elif isinstance(target, ast.Tuple | ast.List):
            values = value.elts if isinstance(value, ast.Tuple | ast.List) else None
            if values is not None and len(values) == len(target.elts):
                for t, v in zip(target.elts, values, strict=True):
                    self._bind(t, v)
            else:
                for t in target.elts:
                    self._bind(t, None)
        elif isinstance(target, ast.Starred):
            self._bind(target.value, None)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.asname:
                self.env[alias.asname] = alias.name
            else:
                top = alias.name.split(".")[0]
                self.env[top] = top
            self._record_path(alias.name, node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level or not node.module:
            return
        for alias in node.names:
            if alias.name == "*":
                for name in self.forbidden:
                    self.env[name] = f"{node.module}.{name}"
                if node.module == _PACKAGE or node.module.startswith(_PACKAGE + "."):
                    self._record_path(node.module, node)
                continue
            path = f"{node.module}.{alias.name}"
            self.env[alias.asname or alias.name] = path
            self._record_path(path, node)

    def visit_Assign(self, node: ast.Assign) -> None:
        self.visit(node.value)
        for target in node.targets:
            self._bind(target, node.value)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            self.visit(node.value)
        self._bind(node.target, node.value)

    def visit_NamedExpr(self, node: ast.NamedExpr) -> None:
        self.visit(node.value)
        self._bind(node.target, node.value)

    def _visit_definition(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef
                          ) -> None:
        self.env.pop(node.name, None)
        self.strings.pop(node.name, None)
        before = len(self.uses)
        was_recording, self.recording = self.recording, True
        self.generic_visit(node)
        self.recording = was_recording
        if not self.recording and node.name in self.forbidden:
            # a helper of the set-up cells that is itself the reference (`reference_step`)
            self.env[node.name] = f"{_EARLIER}.{node.name}"
            del self.uses[before:]
        elif not self.recording and len(self.uses) > before:
            # A function of an earlier cell that uses a reference stands for that reference.
            self.env[node.name] = self.uses[before][0]
            del self.uses[before:]

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _visit_definition

    # -- uses ------------------------------------------------------------------------------

    def _record_path(self, path: str, node: ast.AST) -> None:
        if self.recording and self._forbidden_path(path):
            self.uses.append((path, node))

    def _read_code_string(self, node: ast.AST) -> None:
        """``eval("...")`` / ``exec("...")`` of a constant string: read that code too."""
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id in ("eval", "exec") and node.func.id not in self.env
                and node.args):
            return
        code = _const_str(node.args[0], self.strings)
        try:
            tree = ast.parse(code) if code is not None else None
        except SyntaxError:
            return
        if tree is None:
            return
        for sub in ast.walk(tree):  # report the uses on the line of the eval / exec
            if hasattr(sub, "lineno"):
                sub.lineno = sub.end_lineno = getattr(node, "lineno", 0)
        for statement in tree.body:
            self.visit(statement)

    def _expression(self, node: ast.AST) -> None:
        self._read_code_string(node)
        path = self.resolve(node)
        if self._forbidden_path(path):
            if self.recording:
                self.uses.append((path or "", node))
            return  # the outermost name is enough
        self.generic_visit(node)

    visit_Name = visit_Attribute = visit_Subscript = visit_Call = _expression

    def read(self, source: str, record: bool) -> None:
        try:
            tree = ast.parse(source)
        except SyntaxError:
            return
        self.recording = record
        for statement in tree.body:
            self.visit(statement)
        self.recording = False


_MAGIC = re.compile(r"^\s*[%!]", re.M)


def _python(source: str) -> str:
    """The cell without IPython's ``%magic`` and ``!shell`` lines, which ``ast`` cannot parse."""
    return _MAGIC.sub("pass  # ", source)


def find_reference_uses(
    solution: str, context: Sequence[str] = (), forbidden: Iterable[str] = ()
) -> list[ReferenceUse]:
    """Places in ``solution`` that name a dinolab object called one of ``forbidden``.

    Args:
        solution: the learner's solution cell.
        context: the cells run before it, in order (their imports and aliases count).
        forbidden: names of dinolab objects (functions, classes, modules) the answer may
            not use.

    Returns:
        One :class:`ReferenceUse` per line that uses one, in order; ``[]`` when none does.
    """
    reader = _Reader(set(forbidden))
    if not reader.forbidden:
        return []
    for cell in context:
        reader.read(_python(cell), record=False)
        reader.uses.clear()
    solution = _python(solution)
    reader.read(solution, record=True)
    lines = solution.splitlines()
    seen: set[int] = set()
    found: list[ReferenceUse] = []
    for path, node in sorted(reader.uses, key=lambda u: getattr(u[1], "lineno", 0)):
        line = int(getattr(node, "lineno", 0))
        if line in seen:
            continue
        seen.add(line)
        code = lines[line - 1].strip() if 0 < line <= len(lines) else ""
        found.append(ReferenceUse(path, line, code))
    return found


def refusal_message(exercise: str, uses: Sequence[ReferenceUse]) -> str:
    """Feedback for an answer that uses its reference: where, and why it earns nothing."""
    def name(use: ReferenceUse) -> str:
        if use.name.startswith(_EARLIER + "."):
            return f"{use.name.removeprefix(_EARLIER + '.')}, defined in an earlier cell"
        return use.name

    where = "\n".join(f"  line {u.line}: {u.code}   (uses {name(u)})" for u in uses[:5])
    return (
        f"refused: your `{exercise}` cell uses dinolab's own implementation of what this "
        f"exercise asks you to write:\n{where}\n"
        "The checks compare your code with exactly that implementation, so calling it would "
        "pass them without showing that you can write it; every check of this exercise "
        "scores 0 until the cell computes the result itself (with torch and the building "
        "blocks the exercise names)."
    )


def reference_problem(
    assignment: str, exercise: str, solution: str, context: Sequence[str] = ()
) -> str:
    """:func:`refusal_message` when the answer uses a reference, else ``""``."""
    uses = find_reference_uses(solution, context, forbidden_names(assignment, exercise, solution))
    return refusal_message(exercise, uses) if uses else ""
