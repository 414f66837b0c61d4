"""Finding an insightface model pack (``buffalo_l``) on disk and telling its models apart.

A pack is a folder of ONNX files, ``<root>/insightface/models/<pack>/`` by the convention the
WebUI extensions share (ControlNet downloads ``buffalo_l`` there). Which file is the detector
and which the recogniser is decided from each graph's inputs and outputs, the rule insightface's
model router applies, so renamed files still work and the pack's landmark / gender-age models
are skipped:

- five or more outputs → face detector (SCRFD: scores, boxes and landmarks per stride);
- a 192² input → landmark model, 96² → gender/age, two inputs at 128² → face swapper (unused);
- one square input of at least 112 pixels, a multiple of 16 → recogniser (ArcFace).

Files are examined in name order and the first of each kind wins, as insightface does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import FaceModelError, FaceModelMissingError
from .onnx_info import OnnxInfo, read_onnx_info

DEFAULT_PACK = "buffalo_l"
# The files of the packs FaceID uses, named in messages telling the user what to put where.
PACK_FILES = {
    "buffalo_l": ("det_10g.onnx", "w600k_r50.onnx"),
    "antelopev2": ("scrfd_10g_bnkps.onnx", "glintr100.onnx"),
}


@dataclass(frozen=True)
class FacePack:
    """The two models of a pack face analysis runs, with what their graphs say about them."""

    name: str
    folder: Path
    detector: OnnxInfo
    recognizer: OnnxInfo

    @property
    def recognizer_normalisation(self) -> tuple[float, float]:
        """(mean, std) applied to recogniser input pixels.

        Models converted from MXNet subtract and scale inside the graph (their first nodes are
        named Sub / _minus and Mul / _mul) and take raw pixels; others, w600k_r50 among them,
        take (pixel − 127.5) / 127.5.
        """
        names = self.recognizer.first_nodes
        has_sub = any(n.startswith(("Sub", "_minus")) for n in names)
        has_mul = any(n.startswith(("Mul", "_mul")) for n in names)
        return (0.0, 1.0) if has_sub and has_mul else (127.5, 127.5)


def _square_side(info: OnnxInfo) -> int | None:
    if not info.inputs or len(info.inputs[0].shape) != 4:
        return None
    h, w = info.inputs[0].shape[2:4]
    return h if isinstance(h, int) and h == w else None


def model_kind(info: OnnxInfo) -> str | None:
    """'detection', 'recognition', another insightface task name, or None if unrecognised."""
    if len(info.outputs) >= 5:
        return "detection"
    side = _square_side(info)
    if side == 192:
        return "landmark"
    if side == 96:
        return "genderage"
    if side == 128 and len(info.inputs) == 2:
        return "swapper"
    if side is not None and side >= 112 and side % 16 == 0 and len(info.outputs) == 1:
        return "recognition"
    return None


def candidate_folders(roots: Sequence[Path], name: str) -> list[Path]:
    """Where a pack called ``name`` may be, in search order, for each root.

    ``<root>/insightface/models/<name>`` (a WebUI ``models`` folder), ``<root>/models/<name>``
    (an insightface home such as ``~/.insightface``) and ``<root>/<name>``.
    """
    out: list[Path] = []
    for root in roots:
        root = Path(root).expanduser()
        for folder in (root / "insightface" / "models" / name, root / "models" / name, root / name):
            if folder not in out:
                out.append(folder)
    return out


def load_pack(folder: Path, name: str | None = None) -> FacePack:
    """Read the pack in ``folder``; ``FaceModelMissingError`` if its detector or recogniser is absent."""
    folder = Path(folder)
    name = name or folder.name
    found: dict[str, OnnxInfo] = {}
    unreadable: list[str] = []
    for path in sorted(folder.glob("*.onnx")):
        try:
            info = read_onnx_info(path)
        except FaceModelError:
            unreadable.append(path.name)
            continue
        kind = model_kind(info)
        if kind is not None and kind not in found:
            found[kind] = info
    missing = [k for k in ("detection", "recognition") if k not in found]
    if missing:
        det, rec = PACK_FILES.get(name, PACK_FILES[DEFAULT_PACK])
        wanted = {"detection": f"the face detector ({det})", "recognition": f"the face recogniser ({rec})"}
        note = f" These files are not readable ONNX models: {', '.join(unreadable)}." if unreadable else ""
        raise FaceModelMissingError(
            f"The face model pack '{name}' in {folder} lacks {' and '.join(wanted[k] for k in missing)}."
            f"{note} Put {det} and {rec} from insightface's {name} pack in that folder."
        )
    return FacePack(name=name, folder=folder, detector=found["detection"], recognizer=found["recognition"])


def find_pack(roots: Sequence[Path], name: str = DEFAULT_PACK) -> FacePack:
    """The first folder among ``candidate_folders(roots, name)`` holding a usable pack.

    Raises ``FaceModelMissingError`` naming the folder to create and the files to put there
    when there is none, or the problem with an incomplete pack when only that was found.
    """
    folders = candidate_folders(roots, name)
    incomplete: FaceModelMissingError | None = None
    for folder in folders:
        if not folder.is_dir():
            continue
        try:
            return load_pack(folder, name)
        except FaceModelMissingError as exc:
            incomplete = incomplete or exc
    if incomplete is not None:
        raise incomplete
    det, rec = PACK_FILES.get(name, PACK_FILES[DEFAULT_PACK])
    target = folders[0] if folders else Path("models") / "insightface" / "models" / name
    looked = "; ".join(str(f) for f in folders) or "(no folders given)"
    raise FaceModelMissingError(
        f"The face model pack '{name}' was not found. Put {det} and {rec} (insightface's {name} "
        f"pack) in {target}. Looked in: {looked}."
    )
