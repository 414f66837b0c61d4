"""Projection modules: encoder output → image tokens of the UNet's context width.

Module and parameter names follow the original IP-Adapter repository exactly, so a checkpoint's
``image_proj`` dict loads with ``load_state_dict(strict=True)`` and no key renaming. Each module
takes the same :class:`EncodedImages` input and picks the fields it needs, so callers never
branch on the kind.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import IncompatibleModelError, ModelFileError
from ..load.adapter_info import AdapterInfo, EncoderOutput, ProjectionKind


@dataclass
class EncodedImages:
    """Encoder outputs for N reference images; fields the adapter does not need stay ``None``."""

    image_embeds: torch.Tensor | None = None  # [N, D] projected CLS embedding (SigLIP: its pooled output)
    hidden: torch.Tensor | None = None  # [N, S, H] penultimate hidden states
    face: torch.Tensor | None = None  # [N, 512] face embedding
    last_hidden: torch.Tensor | None = None  # [N, S, H] SigLIP's last hidden state (after its final norm)

    def require(self, name: str) -> torch.Tensor:
        value = getattr(self, name)
        if value is None:
            raise IncompatibleModelError(
                f"the adapter needs the encoder's '{name}' output, which was not computed. "
                "Pick the encoder the model description asks for (or 'auto')."
            )
        return value

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> EncodedImages:
        """A copy with ``fn`` applied to every present field (device/dtype moves)."""
        return EncodedImages(**{f.name: _apply(fn, getattr(self, f.name)) for f in fields(self)})


def _apply(fn: Callable[[torch.Tensor], torch.Tensor], value: torch.Tensor | None) -> torch.Tensor | None:
    return None if value is None else fn(value)


class Projection(nn.Module):
    """Common interface: ``forward(encoded) -> [N, T, ctx]``."""

    def forward(self, enc: EncodedImages, shortcut_scale: float = 1.0) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


class ImageProjModel(Projection):
    """Base adapters: one linear map of ``image_embeds`` into T tokens, then LayerNorm."""

    def __init__(self, in_dim: int, ctx: int, tokens: int) -> None:
        super().__init__()
        self.tokens, self.ctx = tokens, ctx
        self.proj = nn.Linear(in_dim, tokens * ctx)
        self.norm = nn.LayerNorm(ctx)

    def forward(self, enc: EncodedImages, shortcut_scale: float = 1.0) -> torch.Tensor:
        x = self.proj(enc.require("image_embeds"))
        return self.norm(x.reshape(-1, self.tokens, self.ctx))


class FullFaceProjModel(Projection):
    """Full-face: an MLP applied to every hidden-state token (257 tokens out for ViT-H)."""

    def __init__(self, in_dim: int, hidden: int, ctx: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, ctx), nn.LayerNorm(ctx))

    def forward(self, enc: EncodedImages, shortcut_scale: float = 1.0) -> torch.Tensor:
        return self.proj(enc.require("hidden"))


class PerceiverAttention(nn.Module):
    """Latents attend over ``[x; latents]``; the original scales q and k by ``d^-1/4`` each,
    which is the same as SDPA's ``1/sqrt(d)`` on unscaled q and k."""

    def __init__(self, dim: int, heads: int, dim_head: int) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x)
        latents = self.norm2(latents)
        b, n, _ = latents.shape
        q = self.to_q(latents)
        k, v = self.to_kv(torch.cat((x, latents), dim=-2)).chunk(2, dim=-1)

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, t.shape[1], self.heads, -1).transpose(1, 2)

        q, k, v = heads(q), heads(k), heads(v)
        # The original runs the softmax in fp32; do the whole product in fp32 for half inputs.
        out = F.scaled_dot_product_attention(q.float(), k.float(), v.float()).to(q.dtype)
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


def _feed_forward(dim: int, inner: int) -> nn.Sequential:
    # Index 2 is the parameter-free GELU, giving the original keys 0, 1 and 3.
    return nn.Sequential(
        nn.LayerNorm(dim), nn.Linear(dim, inner, bias=False), nn.GELU(), nn.Linear(inner, dim, bias=False)
    )


class _PerceiverStack(nn.Module):
    def __init__(
        self, in_dim: int, dim: int, out_dim: int, depth: int, heads: int, dim_head: int, ff_inner: int
    ) -> None:
        super().__init__()
        self.proj_in = nn.Linear(in_dim, dim)
        self.proj_out = nn.Linear(dim, out_dim)
        self.norm_out = nn.LayerNorm(out_dim)
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(dim, heads, dim_head), _feed_forward(dim, ff_inner)])
            for _ in range(depth)
        )

    def run(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        x = self.proj_in(x)
        for attn, ff in self.layers:
            latents = attn(x, latents) + latents
            latents = ff(latents) + latents
        return self.norm_out(self.proj_out(latents))


class Resampler(_PerceiverStack, Projection):
    """ "Plus" adapters: learned query tokens resample the encoder's hidden states."""

    def __init__(self, tokens: int, **kw: int) -> None:
        super().__init__(**kw)
        self.latents = nn.Parameter(torch.zeros(1, tokens, kw["dim"]))
        self.input_field = "hidden"

    def forward(self, enc: EncodedImages, shortcut_scale: float = 1.0) -> torch.Tensor:
        x = enc.require(self.input_field)
        if x.ndim == 2:  # a face embedding as a one-token sequence (InstantID, portrait-unnorm)
            x = x[:, None, :]
        latents = self.latents.to(x.dtype).repeat(x.shape[0], 1, 1)
        return self.run(x, latents)


class FaceIDProjModel(Projection):
    """FaceID and Portrait: an MLP maps the face embedding to T tokens."""

    def __init__(self, id_dim: int, id_hidden: int, ctx: int, tokens: int) -> None:
        super().__init__()
        self.tokens, self.ctx = tokens, ctx
        self.proj = nn.Sequential(nn.Linear(id_dim, id_hidden), nn.GELU(), nn.Linear(id_hidden, ctx * tokens))
        self.norm = nn.LayerNorm(ctx)

    def face_tokens(self, face: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(face).reshape(-1, self.tokens, self.ctx))

    def forward(self, enc: EncodedImages, shortcut_scale: float = 1.0) -> torch.Tensor:
        return self.face_tokens(enc.require("face"))


class FaceIDPlusProjModel(FaceIDProjModel):
    """FaceID-Plus: face tokens refined by a perceiver over CLIP hidden states of the face crop.

    v2 (``shortcut``) returns ``face_tokens + shortcut_scale · perceiver_out``.
    """

    def __init__(self, id_dim: int, id_hidden: int, ctx: int, tokens: int, shortcut: bool, **perceiver: int) -> None:
        super().__init__(id_dim, id_hidden, ctx, tokens)
        self.shortcut = shortcut
        self.perceiver_resampler = _PerceiverStack(**perceiver)

    def forward(self, enc: EncodedImages, shortcut_scale: float = 1.0) -> torch.Tensor:
        x = self.face_tokens(enc.require("face"))
        out = self.perceiver_resampler.run(enc.require("hidden"), x)
        return x + shortcut_scale * out if self.shortcut else out


class MLPProjModel(Projection):
    """InstantX's Flux adapter: SigLIP's pooled output through Linear, GELU, Linear to T tokens,
    then LayerNorm over each token (names as its ``image_proj``: ``proj.0``, ``proj.2``, ``norm``)."""

    def __init__(self, in_dim: int, hidden: int, ctx: int, tokens: int) -> None:
        super().__init__()
        self.tokens, self.ctx = tokens, ctx
        self.proj = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, ctx * tokens))
        self.norm = nn.LayerNorm(ctx)

    def forward(self, enc: EncodedImages, shortcut_scale: float = 1.0) -> torch.Tensor:
        return self.norm(self.proj(enc.require("image_embeds")).reshape(-1, self.tokens, self.ctx))


class ReduxProjection(Projection):
    """Flux Redux: ``redux_down(silu(redux_up(x)))`` on every token of SigLIP's last hidden state
    (diffusers' ``ReduxImageEncoder``), giving context tokens as wide as T5's."""

    def __init__(self, in_dim: int, hidden: int, ctx: int) -> None:
        super().__init__()
        self.redux_up = nn.Linear(in_dim, hidden)
        self.redux_down = nn.Linear(hidden, ctx)

    def forward(self, enc: EncodedImages, shortcut_scale: float = 1.0) -> torch.Tensor:
        return self.redux_down(F.silu(self.redux_up(enc.require("last_hidden"))))


_PERCEIVER_KEYS = ("in_dim", "dim", "out_dim", "depth", "heads", "dim_head", "ff_inner")


def _perceiver_args(params: Mapping[str, int]) -> dict[str, int]:
    return {k: int(params[k]) for k in _PERCEIVER_KEYS}


def create_projection(info: AdapterInfo) -> Projection:
    """An uninitialised projection module shaped for ``info``."""
    p, ctx = info.params, info.context_dim
    kind = info.kind
    if kind is ProjectionKind.IMAGE:
        return ImageProjModel(p["in_dim"], ctx, p["tokens"])
    if kind is ProjectionKind.FULL:
        return FullFaceProjModel(p["in_dim"], p["hidden"], p["out_dim"])
    if kind is ProjectionKind.RESAMPLER:
        module = Resampler(tokens=p["tokens"], **_perceiver_args(p))
        if info.encoder.output is EncoderOutput.FACE:
            module.input_field = "face"
        return module
    if kind is ProjectionKind.MLP:
        return MLPProjModel(p["in_dim"], p["hidden"], ctx, p["tokens"])
    if kind is ProjectionKind.REDUX:
        return ReduxProjection(p["in_dim"], p["hidden"], ctx)
    if kind is ProjectionKind.FACEID_PLUS:
        return FaceIDPlusProjModel(p["id_dim"], p["id_hidden"], ctx, p["tokens"], info.shortcut, **_perceiver_args(p))
    return FaceIDProjModel(p["id_dim"], p["id_hidden"], ctx, p["tokens"])


def build_projection(info: AdapterInfo, state: Mapping[str, torch.Tensor], filename: str = "adapter") -> Projection:
    """Create the projection and load the checkpoint's ``image_proj`` tensors into it (fp32)."""
    module = create_projection(info)
    try:
        module.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    except RuntimeError as exc:
        raise ModelFileError(
            f"{filename}: the image projection does not load as {info.name} ({exc}). "
            "The file is damaged or a variant this version does not support."
        ) from exc
    return module.eval().requires_grad_(False)
