"""What an adapter file is, decided from its tensor shapes.

The most common failures of other integrations are models "not found" because a loader guessed
from a file name, and size-mismatch tracebacks in the middle of sampling because adapter, encoder
and checkpoint did not fit. Here the tensors decide: base family, projection kind, token count,
required encoder and which encoder output feeds the projection. The file name is consulted only
for the few variants whose tensors are identical (light, plus-face, FaceID-Plus v2, and
Portrait-unnorm among face-embedding Resamplers, which are otherwise InstantID's), and an explicit
override beats both.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from ..errors import ModelFileError
from .adapter_info import (
    FACE_EMBED_WIDTH,
    FLUX_VARIANTS,
    KNOWN_HIDDEN,
    VARIANTS,
    AdapterInfo,
    EncoderOutput,
    EncoderRequirement,
    ProjectionKind,
)
from .detect_flux import (
    is_flux_layout,
    is_instantx_layout,
    is_redux_layout,
    read_flux_layout,
    read_instantx_layout,
    read_redux_layout,
)
from .formats import Shape, guess_content, normalise_shapes

#: File-name hints, consulted only among variants whose tensors are identical.
_NAME_HINTS: dict[ProjectionKind, tuple[tuple[str, str], ...]] = {
    ProjectionKind.IMAGE: (("light", "light"),),
    ProjectionKind.RESAMPLER: (
        ("composition", "plus-composition"),  # ostris' ip_plus_composition_sd15/_sdxl
        ("face", "plus-face"),
    ),
    ProjectionKind.FACEID_PLUS: (("v2", "faceid-plusv2"),),
}
_DEFAULT_VARIANT = {
    ProjectionKind.IMAGE: "base",
    ProjectionKind.RESAMPLER: "plus",
    ProjectionKind.FULL: "full-face",
    ProjectionKind.FACEID: "faceid",
    ProjectionKind.FACEID_PLUS: "faceid-plus",
    ProjectionKind.PORTRAIT: "portrait",
}
_FACE_RESAMPLER_VARIANTS = {"portrait-unnorm", "instantid"}
#: A Resampler reading a face embedding is InstantID's (``InstantX/InstantID``'s ``ip-adapter.bin``,
#: often kept under that bare name) unless the name says Portrait-unnorm: the tensors are the same.
_FACE_RESAMPLER_HINTS = (("unnorm", "portrait-unnorm"), ("portrait", "portrait-unnorm"))
#: Names that mark a Resampler as a face one when its input width is neither 512 nor a CLIP's.
_FACE_RESAMPLER_NAMES = ("unnorm", "instant")


_LAYER_KEY = re.compile(r"^ip_adapter\.(\d+)\.to_k_ip\.weight$")


def _layers(shapes: Mapping[str, Shape], filename: str) -> tuple[int, tuple[int, ...]]:
    """(context width, per-layer widths) from the ``to_k_ip``/``to_v_ip`` keys."""
    indices = sorted(int(m.group(1)) for k in shapes if (m := _LAYER_KEY.match(k)))
    if not indices:
        raise ModelFileError(f"{filename}: not an IP-Adapter model: it has no 'to_k_ip' weights.")
    expected = list(range(1, 2 * len(indices), 2))
    if indices != expected:
        raise ModelFileError(
            f"{filename}: the adapter's layer keys are not the odd numbers 1, 3, 5, … "
            f"(found {indices[:6]}…). The file is damaged or from an unsupported converter."
        )
    widths: list[int] = []
    contexts: set[int] = set()
    for n in indices:
        k = shapes[f"ip_adapter.{n}.to_k_ip.weight"]
        v = shapes.get(f"ip_adapter.{n}.to_v_ip.weight")
        if len(k) != 2 or v != k:
            raise ModelFileError(
                f"{filename}: layer {n} has to_k_ip {k} and to_v_ip {v}; they must be equal 2-D "
                "matrices. The file is damaged."
            )
        widths.append(k[0])
        contexts.add(k[1])
    if len(contexts) != 1:
        raise ModelFileError(f"{filename}: layers disagree on the context width ({sorted(contexts)}).")
    return contexts.pop(), tuple(widths)


def _count(shapes: Mapping[str, Shape], pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in shapes if (m := rx.match(k))})


def _resampler_params(shapes: Mapping[str, Shape], prefix: str) -> dict[str, int]:
    inner = shapes[f"{prefix}layers.0.0.to_q.weight"][0]
    heads = max(1, inner // 64)
    return {
        "in_dim": shapes[f"{prefix}proj_in.weight"][1],
        "dim": shapes[f"{prefix}proj_in.weight"][0],
        "out_dim": shapes[f"{prefix}proj_out.weight"][0],
        "heads": heads,
        "dim_head": inner // heads,
        "depth": _count(shapes, rf"^{re.escape(prefix)}layers\.(\d+)\.0\.to_q\.weight$"),
        "ff_inner": shapes[f"{prefix}layers.0.1.1.weight"][0],
    }


def _classify(shapes: Mapping[str, Shape], ctx: int, filename: str) -> tuple[ProjectionKind, dict[str, int], bool]:
    """Rule order matters: full-face and FaceID also have proj.0/proj.2, plain norm is everywhere."""
    has = shapes.__contains__
    has_lora = any(".to_q_lora.down.weight" in k for k in shapes)
    if has("image_proj.perceiver_resampler.proj_in.weight"):
        params = _resampler_params(shapes, "image_proj.perceiver_resampler.")
        params.update(_mlp_params(shapes, ctx))
        return ProjectionKind.FACEID_PLUS, params, has_lora
    if has("image_proj.proj.3.weight"):
        return (
            ProjectionKind.FULL,
            {
                "in_dim": shapes["image_proj.proj.0.weight"][1],
                "hidden": shapes["image_proj.proj.0.weight"][0],
                "out_dim": shapes["image_proj.proj.3.weight"][0],
            },
            has_lora,
        )
    if has("image_proj.latents"):
        params = _resampler_params(shapes, "image_proj.")
        params["tokens"] = shapes["image_proj.latents"][1]
        return ProjectionKind.RESAMPLER, params, has_lora
    if has("image_proj.proj.0.weight") and has("image_proj.proj.2.weight") and has("image_proj.norm.weight"):
        kind = ProjectionKind.FACEID if has_lora else ProjectionKind.PORTRAIT
        return kind, _mlp_params(shapes, ctx), has_lora
    if has("image_proj.proj.weight") and has("image_proj.norm.weight"):
        out, in_dim = shapes["image_proj.proj.weight"]
        return ProjectionKind.IMAGE, {"in_dim": in_dim, "tokens": out // ctx}, has_lora
    found = sorted(k for k in shapes if k.startswith("image_proj."))[:6]
    raise ModelFileError(
        f"{filename}: unknown image projection (keys {found}). This IP-Adapter variant is not supported."
    )


def _mlp_params(shapes: Mapping[str, Shape], ctx: int) -> dict[str, int]:
    hidden, in_dim = shapes["image_proj.proj.0.weight"]
    return {
        "id_dim": in_dim,
        "id_hidden": hidden,
        "tokens": shapes["image_proj.proj.2.weight"][0] // ctx,
    }


def _requirement(kind: ProjectionKind, variant: str, params: Mapping[str, int]) -> EncoderRequirement:
    if kind is ProjectionKind.IMAGE:
        return EncoderRequirement(EncoderOutput.IMAGE_EMBEDS, params["in_dim"])
    if kind in (ProjectionKind.FULL, ProjectionKind.RESAMPLER):
        if variant in _FACE_RESAMPLER_VARIANTS or (
            kind is ProjectionKind.RESAMPLER and params["in_dim"] == FACE_EMBED_WIDTH
        ):
            return EncoderRequirement(EncoderOutput.FACE, params["in_dim"])
        return EncoderRequirement(EncoderOutput.PENULTIMATE, params["in_dim"])
    if kind is ProjectionKind.FACEID_PLUS:
        return EncoderRequirement(EncoderOutput.FACE_AND_PENULTIMATE, params["id_dim"], params["in_dim"])
    return EncoderRequirement(EncoderOutput.FACE, params["id_dim"])


def _variant(kind: ProjectionKind, filename: str, override: str | None, face_input: bool = False) -> tuple[str, bool]:
    """(variant, whether the file name decided it)."""
    if override:
        override = override.strip().lower()
        if override not in VARIANTS:
            raise ModelFileError(f"unknown variant override '{override}'; choose one of {sorted(VARIANTS)}.")
        face_variant = override in _FACE_RESAMPLER_VARIANTS
        if (
            override in FLUX_VARIANTS
            or VARIANTS[override][1] is not kind
            or (kind is ProjectionKind.RESAMPLER and face_variant != face_input)
        ):
            fits = sorted(
                v
                for v, (_, k) in VARIANTS.items()
                if k is kind and (kind is not ProjectionKind.RESAMPLER or (v in _FACE_RESAMPLER_VARIANTS) == face_input)
            )
            raise ModelFileError(
                f"{filename}: the tensors are a {kind.value} projection, so it cannot be "
                f"'{override}'. Variants that fit this file: {fits}."
            )
        return override, False
    stem = filename.lower()
    if face_input:
        named = next((v for needle, v in _FACE_RESAMPLER_HINTS if needle in stem), None)
        return (named, True) if named else ("instantid", False)
    for needle, variant in _NAME_HINTS.get(kind, ()):
        if needle in stem:
            return variant, True
    return _DEFAULT_VARIANT[kind], False


def _flux_variant(shapes: Mapping[str, Shape]) -> str | None:
    if is_redux_layout(shapes):
        return "flux-redux"
    if is_flux_layout(shapes):
        return "xlabs-flux"
    if is_instantx_layout(shapes):
        return "instantx-flux"
    return None


def _flux_info(shapes: Mapping[str, Shape], variant: str, filename: str, override: str | None) -> AdapterInfo:
    if override and override.strip().lower() != variant:
        raise ModelFileError(
            f"{filename}: the tensors are a {VARIANTS[variant][0]}, so it cannot be '{override}'. "
            f"Variants that fit this file: ['{variant}']."
        )
    if variant == "instantx-flux":
        ix = read_instantx_layout(shapes, filename)
        return AdapterInfo(
            variant=variant,
            kind=ProjectionKind.MLP,
            context_dim=ix.context_dim,
            layer_widths=(ix.hidden,) * ix.blocks,
            tokens=ix.tokens,
            encoder=EncoderRequirement(EncoderOutput.IMAGE_EMBEDS, ix.embed_dim, family="siglip"),
            params={"in_dim": ix.embed_dim, "hidden": ix.mlp_hidden, "tokens": ix.tokens},
            arch="flux",
        )
    if variant == "flux-redux":
        rx = read_redux_layout(shapes, filename)
        return AdapterInfo(
            variant=variant,
            kind=ProjectionKind.REDUX,
            context_dim=rx.context_dim,
            layer_widths=(),
            tokens=None,
            encoder=EncoderRequirement(EncoderOutput.LAST_HIDDEN, rx.embed_dim, family="siglip"),
            params={"in_dim": rx.embed_dim, "hidden": rx.hidden},
            arch="flux",
        )
    layout = read_flux_layout(shapes, filename)
    return AdapterInfo(
        variant="xlabs-flux",
        kind=ProjectionKind.IMAGE,
        context_dim=layout.context_dim,
        layer_widths=(layout.hidden,) * layout.blocks,
        tokens=layout.tokens,
        encoder=EncoderRequirement(EncoderOutput.IMAGE_EMBEDS, layout.embed_dim),
        params={"in_dim": layout.embed_dim, "tokens": layout.tokens},
        arch="flux",
    )


def detect_adapter(shapes: Mapping[str, Shape], filename: str = "adapter", override: str | None = None) -> AdapterInfo:
    """Classify an adapter from ``{key: shape}`` (flat keys, any supported prefix).

    ``filename`` is used for messages and for the name-only variants; ``override`` is a variant
    name from :data:`VARIANTS` that the user chose explicitly.
    """
    normalised = normalise_shapes(shapes)
    if not any(k.startswith("image_proj.") for k in normalised):
        raise ModelFileError(f"{filename}: not an IP-Adapter model; it looks like {guess_content(list(shapes))}.")
    shapes = normalised
    flux = _flux_variant(shapes)
    if flux is not None:
        return _flux_info(shapes, flux, filename, override)
    ctx, widths = _layers(shapes, filename)
    kind, params, has_lora = _classify(shapes, ctx, filename)
    if kind is ProjectionKind.RESAMPLER and params["out_dim"] != ctx:
        raise ModelFileError(
            f"{filename}: the resampler outputs {params['out_dim']}-wide tokens but the layers take "
            f"{ctx}; this looks like a Kolors IP-Adapter, which is not supported."
        )
    face_input = kind is ProjectionKind.RESAMPLER and (
        params["in_dim"] == FACE_EMBED_WIDTH
        or (params["in_dim"] not in KNOWN_HIDDEN and any(n in filename.lower() for n in _FACE_RESAMPLER_NAMES))
    )
    variant, by_name = _variant(kind, filename, override, face_input)
    tokens: int | None = params.get("tokens")
    if kind is ProjectionKind.FULL:
        # ViT-H/14 and ViT-bigG/14 at 224 px give 256 patches + CLS; other encoders vary.
        tokens = 257 if params["in_dim"] in (1280, 1664) else None
    return AdapterInfo(
        variant=variant,
        kind=kind,
        context_dim=ctx,
        layer_widths=widths,
        tokens=tokens,
        encoder=_requirement(kind, variant, params),
        has_lora=has_lora,
        params=params,
        by_name=by_name,
    )
