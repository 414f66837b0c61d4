"""Pre-flight checks: does this adapter fit this encoder and this UNet?

Run before sampling, so a mismatch is reported in words with the fix ("this is an SDXL adapter;
the loaded checkpoint is SD1.5") instead of a tensor size mismatch mid-generation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..encode.encoder import EncoderSpec
from ..errors import IncompatibleModelError
from .adapter_info import KNOWN_CONTEXT, AdapterInfo, EncoderOutput


@dataclass(frozen=True)
class UNetSignature:
    """What the host reports about the UNet about to sample.

    ``attn2_widths`` lists the query width of every cross-attention layer in adapter key order
    (down blocks, up blocks, then the middle block). ``transformer_index`` gives each of those
    layers' SpatialTransformer in execution order (``t_idx``, what weight types are written
    against) and ``transformer_blocks`` each transformer's block ("input", "middle", "output").

    For Flux (``arch="flux"``) the "layers" are the double-stream blocks: ``attn2_widths`` holds
    the hidden width once per double block and ``context_dim`` the text-token width (``txt_in``);
    ``single_blocks`` counts the single-stream blocks (InstantX patches them too) and ``head_dim``
    is the attention heads' width (InstantX normalises its keys per head).
    """

    context_dim: int
    attn2_widths: tuple[int, ...]
    label: str = ""
    transformer_index: tuple[int, ...] = ()
    transformer_blocks: tuple[str, ...] = ()
    arch: str = "sd"
    single_blocks: int = 0
    head_dim: int = 0

    @classmethod
    def from_slots(cls, context_dim: int, widths: Sequence[int], slots: Sequence, label: str = "") -> UNetSignature:
        """From :func:`~.layers.map_ldm_attn2` slots (in key order) and the layers' widths."""
        blocks = {s.transformer_index: s.block for s in slots}
        return cls(
            context_dim,
            tuple(widths),
            label,
            tuple(s.transformer_index for s in slots),
            tuple(blocks[t] for t in range(len(blocks))),
        )

    @property
    def family(self) -> str:
        if self.label:
            return self.label
        return KNOWN_CONTEXT.get(self.context_dim, f"a model with context width {self.context_dim}")


def check_unet(info: AdapterInfo, unet: UNetSignature, model_name: str = "the adapter") -> None:
    """Raise :class:`IncompatibleModelError` naming the mismatch and the fix."""
    if info.arch != unet.arch:
        where = " in Forge" if info.arch == "flux" else ""
        raise IncompatibleModelError(
            f"{model_name} is {_article(info.family)} {info.family} IP-Adapter ({info.name}); the loaded checkpoint "
            f"is {unet.family}. Choose an IP-Adapter model made for {unet.family}, or load "
            f"{_article(info.family)} {info.family} checkpoint{where}."
        )
    if info.arch == "flux":
        _check_flux(info, unet, model_name)
        return
    if info.context_dim != unet.context_dim:
        if info.family in KNOWN_CONTEXT.values() and info.family != unet.family:
            raise IncompatibleModelError(
                f"{model_name} is an {info.family} IP-Adapter; the loaded checkpoint is {unet.family}. "
                f"Choose an IP-Adapter model made for {unet.family}, or load an {info.family} checkpoint."
            )
        raise IncompatibleModelError(
            f"{model_name} ({info.family}) expects a text context {info.context_dim} wide; the loaded "
            f"{unet.family} checkpoint's is {unet.context_dim}. Choose an IP-Adapter model made for this checkpoint."
        )
    if info.num_layers != len(unet.attn2_widths):
        raise IncompatibleModelError(
            f"{model_name} has {info.num_layers} cross-attention layers; the loaded {unet.family} UNet has "
            f"{len(unet.attn2_widths)}. The checkpoint is probably a distilled or pruned variant "
            "(e.g. SSD-1B, Vega) that this adapter was not trained for; use a full-size checkpoint."
        )
    for n, (want, have) in enumerate(zip(info.layer_widths, unet.attn2_widths, strict=True)):
        if want != have:
            raise IncompatibleModelError(
                f"{model_name}: cross-attention layer {n} (key {2 * n + 1}) is {want} wide in the adapter "
                f"but {have} wide in the loaded UNet. The checkpoint's architecture differs from the "
                f"{info.family} UNet the adapter was trained on."
            )


def _article(word: str) -> str:
    """'an SD1.5', 'an SDXL', 'a Flux': SD is read letter by letter."""
    return "an" if word[:1] in "AEIOSaeio" else "a"


def _check_flux(info: AdapterInfo, unet: UNetSignature, model_name: str) -> None:
    widths = set(unet.attn2_widths)
    if info.variant == "instantx-flux":
        blocks = len(unet.attn2_widths) + unet.single_blocks
        if info.num_layers != blocks or set(info.layer_widths) != widths:
            raise IncompatibleModelError(
                f"{model_name} is made for a Flux transformer with {info.num_layers} blocks (double and single) "
                f"{info.layer_widths[0] if info.layer_widths else 0} wide; the loaded one has {blocks} blocks "
                f"({len(unet.attn2_widths)} double, {unet.single_blocks} single) "
                f"{'/'.join(str(w) for w in sorted(widths)) or 0} wide. Use a full Flux.1 checkpoint "
                "(dev or schnell), not a pruned or resized one."
            )
    elif info.variant != "flux-redux" and (
        info.num_layers != len(unet.attn2_widths) or set(info.layer_widths) != widths
    ):
        raise IncompatibleModelError(
            f"{model_name} is made for a Flux transformer with {info.num_layers} double blocks "
            f"{info.layer_widths[0] if info.layer_widths else 0} wide; the loaded one has {len(unet.attn2_widths)} "
            f"double blocks {'/'.join(str(w) for w in sorted(widths)) or 0} wide. Use a full Flux.1 checkpoint "
            "(dev or schnell), not a pruned or resized one."
        )
    if info.context_dim != unet.context_dim:
        raise IncompatibleModelError(
            f"{model_name} makes {info.context_dim}-wide image tokens; the loaded Flux's text tokens are "
            f"{unet.context_dim} wide. Choose an IP-Adapter model made for this checkpoint."
        )


def check_encoder(
    info: AdapterInfo, spec: EncoderSpec, model_name: str = "the adapter", encoder_name: str = "the encoder"
) -> None:
    """Raise :class:`IncompatibleModelError` when the encoder cannot feed the projection."""
    req = info.encoder
    if not req.needs_clip:
        return
    have_desc = spec.describe()
    if req.family != spec.family:
        kind = "a SigLIP" if spec.family == "siglip" else "a CLIP"
        raise IncompatibleModelError(
            f"{model_name} ({info.describe()}) cannot use '{encoder_name}': it is {kind} encoder ({have_desc}), and "
            f"this model needs {req.describe()}. Choose {req.describe()} as the encoder, or 'auto'."
        )
    if spec.family == "siglip":
        if req.output is EncoderOutput.IMAGE_EMBEDS and not getattr(spec, "pooled", False):
            raise IncompatibleModelError(
                f"{model_name} needs SigLIP's pooled output, but '{encoder_name}' ({have_desc}) has no pooling head "
                f"(head.* tensors). Use the complete {req.describe()} file."
            )
        if spec.hidden_size == req.width:
            return
        have = f"{spec.hidden_size}-wide outputs"
    elif req.output is EncoderOutput.IMAGE_EMBEDS:
        if spec.projection_dim is None:
            raise IncompatibleModelError(
                f"{model_name} needs image embeds, but '{encoder_name}' ({have_desc}) has no visual_projection "
                f"weights. Use a complete {req.describe()} file."
            )
        if spec.projection_dim == req.width:
            return
        have = f"{spec.projection_dim}-wide image embeds"
    else:
        if spec.hidden_size == req.clip_width:
            return
        have = f"{spec.hidden_size}-wide hidden states"
    raise IncompatibleModelError(
        f"{model_name} ({info.describe()}) cannot use '{encoder_name}': it gives {have} ({have_desc}). "
        f"Choose {req.describe()} as the encoder, or 'auto'."
    )


def compatible_encoders(info: AdapterInfo, specs: Sequence[tuple[str, EncoderSpec]]) -> list[str]:
    """Names of the encoders (from ``(name, spec)`` pairs) that fit ``info``, for 'auto' and hints."""
    fits = []
    for name, spec in specs:
        try:
            check_encoder(info, spec)
        except IncompatibleModelError:
            continue
        fits.append(name)
    return fits
