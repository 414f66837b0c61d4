"""What a generation adds after its images: attention maps and detected faces, each an extra
image with an infotext that says it is not a generated one (both hosts' ``postprocess``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .common import StateBase


def append_maps(p: Any, processed: Any, state: StateBase) -> None:
    """After the generated images, one attention map per image and enabled unit, each laid over
    its image, on one scale shared by every unit of the generation; its infotext says what it is."""
    if not state.maps or not state.drawn or state.job is None:
        return
    from ..core.attend.attention_map import normalise, render, shared_scale

    names = {u.number: u.adapter.name for u in state.job.units}
    tiled = {u.number: (u.tiling.axis, u.tiling.bands()) for u in state.job.units if u.tiling is not None}
    scale = shared_scale(m for units in state.drawn.values() for images in units.values() for m in images.values())
    first, batch = int(getattr(processed, "index_of_first_image", 0)), int(getattr(p, "batch_size", 1) or 1)
    generated = len(processed.images)
    for iteration, units in sorted(state.drawn.items()):
        per_image: dict[int, list[tuple[int, Any]]] = {}
        for number, images in units.items():
            for index, heat in images.items():
                per_image.setdefault(index, []).append((number, heat))
        for index, maps in sorted(per_image.items()):
            at = first + iteration * batch + index
            if at >= generated:
                continue
            for number, heat in sorted(maps, key=lambda m: m[0]):
                label = f"IP-Adapter unit {number} · {names.get(number, '')}"
                label += f" · {len(tiled[number][1])} tiles" if number in tiled else ""
                processed.images.append(render(processed.images[at], normalise(heat, scale), label, tiled.get(number)))
                processed.infotexts.append(
                    f"IP-Adapter attention map: unit {number}, model {names.get(number, '')}, image {at - first + 1}"
                    f" (not a generated image; one scale for all units of this generation, max {scale:.3g})"
                )


def append_faces(processed: Any, state: StateBase) -> None:
    """After the generated images: each FaceID reference with the face found in it (box,
    keypoints) and the aligned crop the adapter saw, when the request asked for them."""
    if state.job is None or not any(r.show_faces for r in state.requests):
        return
    from ..core.encode.faces import preview

    for unit in state.job.units:
        for index, (image, found) in enumerate(unit.faces, start=1):
            box = ", ".join(f"{float(v):.0f}" for v in found.face.box)
            processed.images.append(preview(image, found))
            processed.infotexts.append(
                f"IP-Adapter detected face: unit {unit.number}, image {index}, score {float(found.face.score):.2f}, "
                f"box ({box}) (not a generated image)"
            )
