"""A CLIP unit's image tokens: references → views → encoder → combine → projection.

Everything the unit's reference side asks for is decided here, once per generation: the crop
(``tiles`` gives one token group per tile, with the first reference's tiling for the bands), the
reference mask and sharpening, several references combined, one reference per batch image, the
uncond side (zeros as the original, a negative image, or the references degraded by a noise type
drawn from each batch image's seed), and the composition image, whose tokens replace the
reference's on the composition block only.

The result is one :class:`~.attend.kv.TokenSet` for the references (and one for the composition
image): cond and uncond tokens of equal length, group by group, with one uncond row per seed when
the noise is seeded per image.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .attend.kv import TokenSet
from .encode.cache import EmbeddingCache
from .encode.combine import combine_encoded
from .encode.encoder import ImageEncoder
from .encode.preprocess import CropMode
from .encode.references import NoiseSpec, ReferenceView, encode_references, encode_tiled
from .encode.tiles import Tiling
from .load.adapter import IPAdapterModel
from .project.projections import EncodedImages
from .request import UnitRequest

#: (encoder outputs of N images) → their tokens, [1, N·T, ctx] (the engine's projection on the device).
Project = Callable[[EncodedImages], torch.Tensor]


@dataclass
class ReferenceTokens:
    """The token set of some references and, when they were tiled into several tiles, the tiling."""

    tokens: TokenSet
    tiling: Tiling | None = None


class TokenBuilder:
    """Builds a unit's token sets with one adapter, encoder and embedding cache."""

    def __init__(
        self,
        req: UnitRequest,
        adapter: IPAdapterModel,
        encoder: ImageEncoder,
        cache: EmbeddingCache,
        project: Project,
    ) -> None:
        self.req, self.adapter, self.encoder, self.cache, self.project = req, adapter, encoder, cache, project

    def noise(self, seed: int) -> NoiseSpec:
        req = self.req
        return NoiseSpec(req.noise_type, req.noise, req.noise_blur, seed)

    def seeds(self, image_index: int | None) -> list[int]:
        """The seeds of the uncond rows: one per batch image for the seeded noise types (only image
        ``image_index``'s for a reference of its own), a single fixed one otherwise."""
        req = self.req
        if not req.seeded_noise or not req.seeds:
            return [0]
        if image_index is not None:
            return [req.seeds[image_index % len(req.seeds)]]
        return list(req.seeds)

    def references(self) -> ReferenceTokens:
        """The unit's references: one token set, one row per image with ``per_image``."""
        req = self.req
        view = ReferenceView(CropMode(req.crop), req.sharpening, req.reference_mask)
        if not req.per_image:
            return self.reference_set(req.images, view, self.seeds(None))
        sets = [self.reference_set([image], view, self.seeds(i)) for i, image in enumerate(req.images)]
        counts = {s.tokens.groups for s in sets}
        if len(counts) > 1:
            raise_mismatch(sets)
        cond = torch.cat([s.tokens.cond for s in sets])
        uncond = torch.cat([s.tokens.uncond for s in sets])
        return ReferenceTokens(TokenSet(cond, uncond, sets[0].tokens.groups), sets[0].tiling)

    def composition(self) -> ReferenceTokens | None:
        """The composition image's tokens (with the unit's crop and sharpening, not its reference mask)."""
        if not self.req.composition_images:
            return None
        view = ReferenceView(CropMode(self.req.crop), self.req.sharpening, None)
        return self.reference_set(self.req.composition_images[:1], view, self.seeds(None))

    def reference_set(self, images: Sequence, view: ReferenceView, seeds: list[int]) -> ReferenceTokens:
        """``images`` as one reference: cond [1, G·T, ctx], uncond [len(seeds), G·T, ctx]."""
        req = self.req
        weights = None if req.per_image else req.image_weights
        tiled = CropMode(view.crop) is CropMode.TILES
        if tiled:
            per_group, tiling = encode_tiled(self.encoder, images, view, self.cache)
            tiling = tiling if tiling.count > 1 else None
        else:
            per_group, tiling = [encode_references(self.encoder, images, view=view, cache=self.cache)], None
        cond_encoded = [combine_encoded(enc, req.combine, weights) for enc in per_group]
        cond_groups = [self.project(enc) for enc in cond_encoded]
        uncond_rows = [
            torch.cat(self._uncond_groups(images, view, cond_encoded, cond_groups, seed), dim=1) for seed in seeds
        ]
        tokens = TokenSet(torch.cat(cond_groups, dim=1), torch.cat(uncond_rows), len(cond_groups))
        return ReferenceTokens(tokens, tiling)

    def _uncond_groups(
        self,
        images: Sequence,
        view: ReferenceView,
        cond_encoded: list[EncodedImages],
        cond_groups: list[torch.Tensor],
        seed: int,
    ) -> list[torch.Tensor]:
        """The uncond tokens of each group, as long as that group's cond tokens."""
        req = self.req
        spec = self.noise(seed)
        weights = None if req.per_image else req.image_weights
        if req.negative_images:
            crop = CropMode.CENTER if CropMode(view.crop) is CropMode.TILES else CropMode(view.crop)
            negative = encode_references(self.encoder, req.negative_images[:1], view=ReferenceView(crop), noise=spec,
                                         cache=self.cache)  # fmt: skip
            tokens = self.project(negative)
            return [_repeat_to(tokens, cond.shape[1]) for cond in cond_groups]
        if spec.active:
            if CropMode(view.crop) is CropMode.TILES and len(cond_groups) > 1:
                noisy, _ = encode_tiled(self.encoder, images, view, self.cache, spec)
            else:
                untiled = view if CropMode(view.crop) is not CropMode.TILES else _centre(view)
                noisy = [encode_references(self.encoder, images, view=untiled, cache=self.cache, noise=spec)]
            return [self.project(combine_encoded(enc, req.combine, weights)) for enc in noisy]
        return [self.project(self.adapter.negative_inputs(enc, self.encoder)) for enc in cond_encoded]


def _centre(view: ReferenceView) -> ReferenceView:
    return ReferenceView(CropMode.CENTER, view.sharpening, view.mask)


def _repeat_to(tokens: torch.Tensor, length: int) -> torch.Tensor:
    """``tokens`` [1, T, ctx] repeated to ``length`` tokens: attention over k copies of a token set
    equals attention over one, so one negative image stands against several references."""
    if length % tokens.shape[1]:
        raise ValueError(f"uncond tokens ({tokens.shape[1]}) do not divide cond tokens ({length})")
    return tokens.repeat(1, length // tokens.shape[1], 1)


def raise_mismatch(sets: list[ReferenceTokens]) -> None:
    from .errors import IPAdapterError

    found = ", ".join(s.tiling.describe() if s.tiling is not None else "1" for s in sets)
    raise IPAdapterError(
        f"with the 'tiles' crop and one reference per batch image, every reference must give the same number of "
        f"tiles, but they give {found}. Use references of similar shape, or another crop mode."
    )
