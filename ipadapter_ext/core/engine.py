"""From unit requests to a ready :class:`~.job.Job`: resolve, check, load, encode, project.

The engine lives as long as the WebUI process and owns the explicit, bounded caches: detected
model files (in the registry), loaded models, and image embeddings. Everything a generation
needs is computed here once, before sampling; a mismatch or a missing input is an
:class:`IPAdapterError` naming the unit, the problem and the fix.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .attend.context import DOWNSAMPLE_RANGE, ContextUnit, StrengthMode, downsample_tokens
from .attend.kv import TokenSet, UnitKV
from .attend.weights import WeightType, composition_transformers
from .encode.cache import EmbeddingCache
from .encode.combine import combine_encoded
from .encode.encoder import ImageEncoder, load_encoder
from .encode.faces import FaceReferences, FoundFace
from .encode.preprocess import CropMode
from .encode.references import ReferenceView, encode_references
from .encode.tiles import BandMasks
from .errors import IncompatibleModelError, IPAdapterError
from .job import Job, PreparedUnit
from .load import progress
from .load.adapter import IPAdapterModel
from .load.adapter_info import FACE_PACK_BY_VARIANT, EncoderOutput
from .load.compat import UNetSignature, check_encoder, check_unet
from .load.loaded import ModelCache, file_key, held_bytes
from .load.registry import ModelRegistry
from .placement import Placement, running_on
from .project.projections import EncodedImages
from .reference_tokens import ReferenceTokens, TokenBuilder
from .request import AUTO, UnitRequest
from .unit_checks import embeds_tokens, layer_weights, refuse_image_craft, region_mask

__all__ = ["AUTO", "Engine", "Placement", "UnitRequest", "running_on"]

log = logging.getLogger("ipadapter")

#: Adapters whose projection reads the face embedding (and FaceID-Plus the face crop's CLIP states).
FACE_OUTPUTS = (EncoderOutput.FACE, EncoderOutput.FACE_AND_PENULTIMATE)
#: Variants trained on ArcFace's raw embedding rather than the L2-normalised one.
RAW_FACE_VARIANTS = frozenset({"portrait-unnorm", "instantid"})


@dataclass
class UnitTokens:
    """A unit's tokens: the references' (grouped when tiled) and the composition image's."""

    adapter: IPAdapterModel
    encoder_name: str
    references: ReferenceTokens
    composition: ReferenceTokens | None = None


#: Default bounds of the loaded-model caches: three units with three adapters, and the two
#: encoders SD1.5 and SDXL adapters need (ViT-H, bigG), stay loaded.
ADAPTERS_KEPT = 4
ENCODERS_KEPT = 2


def _size_text(nbytes: int) -> str:
    return f"{nbytes / 2**30:.2f} GB" if nbytes >= 2**30 else f"{nbytes / 2**20:.1f} MB"


class Engine:
    """Lives as long as the WebUI process; owns the registry and every cache.

    ``lock`` is held while units are prepared (models loaded, moved to the UNet's device,
    references encoded, K/V projected) and by the HTTP routes that use the same models, so a
    route never moves an encoder or adapter that a generation is using at that moment. Sampling
    itself needs none of them (the K/V are computed by then), so the lock is never held across
    a sampling pass.
    """

    def __init__(
        self,
        registry: ModelRegistry,
        embedding_cache_size: int = 32,
        faces: FaceReferences | None = None,
        adapters_kept: int = ADAPTERS_KEPT,
        encoders_kept: int = ENCODERS_KEPT,
        announce: Callable[[str], None] = print,
    ) -> None:
        self.registry = registry
        self.embeddings = EmbeddingCache(embedding_cache_size)
        self.adapters = ModelCache("adapters", adapters_kept)
        self.encoders = ModelCache("encoders", encoders_kept)
        #: Face analysis for the FaceID adapters (``None``: a host that offers none).
        self.faces = faces
        #: Where cold loads are announced (the WebUI console).
        self.announce = announce
        self.lock = threading.RLock()
        #: The K/V of prepared units still alive anywhere (a job, a host's patches), for the report.
        self._kv: weakref.WeakSet[UnitKV] = weakref.WeakSet()

    def _load(self, cache: ModelCache, what: str, path: Path, build: Callable[[], object]) -> object:
        def load() -> object:
            self.announce(f"IP-Adapter: loading the {what} {path.name} ({_size_text(path.stat().st_size)})")
            with progress.labelled(f"IP-Adapter: {path.name}"):
                return build()

        return cache.get(file_key(what, path), load)

    def _adapter(self, name: str) -> IPAdapterModel:
        entry = self.registry.adapter(name)
        if entry.info is None:
            raise IPAdapterError(f"model '{name}' cannot be used: {entry.error}")
        return self._load(self.adapters, "IP-Adapter model", entry.path, lambda: IPAdapterModel.from_file(entry.path))  # type: ignore[return-value]

    def _encoder(self, req: UnitRequest, adapter: IPAdapterModel, place: Placement) -> tuple[str, ImageEncoder]:
        entry = self.registry.auto_encoder(req.model) if req.encoder == AUTO else self.registry.encoder(req.encoder)
        if entry.spec is None:
            raise IPAdapterError(f"encoder '{entry.name}' cannot be used: {entry.error}")
        check_encoder(adapter.info, entry.spec, f"'{req.model}'", entry.name)
        encoder = self._load(
            self.encoders,
            "image encoder",
            entry.path,
            lambda: load_encoder(entry.path, "cpu", place.encoder_dtype),
        )
        return entry.name, encoder  # type: ignore[return-value]

    def clear_caches(self) -> dict[str, int]:
        """Empty every cache (models in use by a running generation live on until it ends);
        returns how many entries each held."""
        with self.lock:
            cleared = {
                "adapters": self.adapters.clear(),
                "encoders": self.encoders.clear(),
                "embeddings": self.embeddings.clear(),
            }
            if self.faces is not None:
                cleared["faces"] = self.faces.clear()
            return cleared

    def cache_report(self) -> dict[str, dict]:
        """What each cache holds now and its bounds (``GET /ipadapter/v1/cache``)."""
        kv = list(self._kv)
        kv_bytes = held_bytes(kv)
        report = {
            "adapters": self.adapters.report(),
            "encoders": self.encoders.report(),
            "embeddings": self.embeddings.report(),
            "kv": {
                "entries": len(kv),
                "max_entries": None,
                "bytes": sum(kv_bytes.values()),
                "bytes_by_device": kv_bytes,
                "held_by": "the units of generations still referenced (running ones; freed when each ends)",
            },
        }
        if self.faces is not None:
            report["faces"] = self.faces.report()
        return report

    def _fitting_models(self, unet: UNetSignature) -> str:
        fits = []
        for entry in self.registry.adapters():
            try:
                if entry.info is not None:
                    check_unet(entry.info, unet)
                    fits.append(entry.name)
            except IncompatibleModelError:
                continue
        if not fits:
            return "None of the models in the model folders fits it."
        return f"Models that fit it: {', '.join(fits)}."

    def tokens(self, req: UnitRequest, place: Placement) -> tuple[IPAdapterModel, str, torch.Tensor, torch.Tensor]:
        """(adapter, encoder name, cond tokens, uncond tokens) for one unit, as ``/encode`` packs
        them: one token group, no composition image."""
        with self.lock:
            found = self.unit_tokens(req, place)
        if found.references.tokens.groups > 1 or found.composition is not None:
            raise IPAdapterError(
                "a tiled reference (one token group per tile) and a composition image cannot be packed into embeds. "
                "Send the image itself in the unit, with crop 'tiles' or composition_image there."
            )
        tokens = found.references.tokens
        return found.adapter, found.encoder_name, tokens.cond, tokens.uncond

    def unit_tokens(self, req: UnitRequest, place: Placement) -> UnitTokens:
        """Every token set of one unit: encoded from its images, or taken from its ``embeds``."""
        adapter = self._requested_adapter(req)
        if adapter.info.variant == "flux-redux":
            raise IPAdapterError(
                f"'{req.model}' is Flux Redux: its tokens are added to the prompt when generating, so there are no "
                "embeds to make. Send the image in the unit itself."
            )
        if req.embeds is not None:
            refuse_image_craft(req, "embeds already are tokens")
            return UnitTokens(adapter, "embeds", ReferenceTokens(TokenSet(*embeds_tokens(req, adapter))))
        if adapter.info.encoder.output in FACE_OUTPUTS:
            refuse_image_craft(
                req, f"'{req.model}' is a FaceID model, whose face is found and cropped by the face analysis"
            )
            name, cond, uncond = self._face_tokens(req, adapter, place)
            return UnitTokens(adapter, name, ReferenceTokens(TokenSet(cond, uncond)))
        encoder_name, encoder = self._encoder(req, adapter, place)
        with running_on(place, adapter, encoder):
            builder = TokenBuilder(
                req, adapter, encoder, self.embeddings, lambda enc: self._project(adapter, enc, place)
            )
            return UnitTokens(adapter, encoder_name, builder.references(), builder.composition())

    def _requested_adapter(self, req: UnitRequest) -> IPAdapterModel:
        if not req.model:
            raise IPAdapterError("no model selected. Choose an IP-Adapter model (refresh the list after adding files).")
        if not req.images and req.embeds is None:
            raise IPAdapterError("no reference image. Drop an image into the unit or disable it.")
        return self._adapter(req.model)

    def _redux_tokens(self, req: UnitRequest, place: Placement) -> tuple[IPAdapterModel, str, torch.Tensor]:
        """Redux's context tokens [n, T, ctx] (n = 1, or one row per image with ``per_image``),
        downsampled, for the cond side only."""
        adapter = self._requested_adapter(req)
        if req.crop == CropMode.TILES.value or req.composition_images:
            raise IPAdapterError(
                "Redux adds one reference's tokens to the prompt, so crop 'tiles' and composition_image do not apply. "
                "Use another crop mode and remove the composition image."
            )
        encoder_name, encoder = self._encoder(req, adapter, place)
        view = ReferenceView(CropMode(req.crop), req.sharpening, req.reference_mask)
        groups = [[image] for image in req.images] if req.per_image else [req.images]
        weights = None if req.per_image else req.image_weights
        rows = []
        with running_on(place, adapter, encoder):
            for images in groups:
                encoded = encode_references(encoder, images, view=view, cache=self.embeddings)
                tokens = self._project(adapter, combine_encoded(encoded, req.combine, weights), place)
                tokens = downsample_tokens(tokens, req.redux_downsample, req.redux_downsample_mode)
                rows.append(tokens.reshape(1, -1, tokens.shape[-1]))
        return adapter, encoder_name, torch.cat(rows)

    def found_faces(self, req: UnitRequest, adapter: IPAdapterModel) -> list[FoundFace]:
        """The face of each reference of a FaceID unit (detected once per photo, then cached), with
        the pack the adapter was trained on where that is not the chosen one (InstantID)."""
        if self.faces is None:
            raise IPAdapterError("this host offers no face analysis, which FaceID models need.")
        pack = FACE_PACK_BY_VARIANT.get(adapter.info.variant)
        return self.faces.find_all(req.images, f"IP-Adapter unit {req.number}", pack)

    def _face_tokens(
        self, req: UnitRequest, adapter: IPAdapterModel, place: Placement
    ) -> tuple[str, torch.Tensor, torch.Tensor]:
        """FaceID: the face embedding of each reference (FaceID-Plus: and CLIP's view of the
        aligned face crop); the uncond side is the original's zero embedding."""
        if req.negative_images or req.noise > 0 or req.noise_blur > 0:
            raise IPAdapterError(
                f"'{req.model}' is a FaceID model: its negative side is a zero face embedding, so negative_image "
                "and noise do not apply. Remove them."
            )
        found = self.found_faces(req, adapter)
        raw = adapter.info.variant in RAW_FACE_VARIANTS
        groups = [[f] for f in found] if req.per_image else [found]
        encoder_name, encoder = "face analysis", None
        if adapter.info.encoder.output is EncoderOutput.FACE_AND_PENULTIMATE:
            encoder_name, encoder = self._encoder(req, adapter, place)
            encoder_name = f"face analysis + {encoder_name}"
        pairs = []
        with running_on(place, adapter, encoder):
            for group in groups:
                face = torch.stack([f.embedding(normalised=not raw) for f in group])
                hidden = None
                if encoder is not None:
                    hidden = encode_references(encoder, [f.crop for f in group], "center", self.embeddings).hidden
                enc = EncodedImages(face=face, hidden=hidden)
                enc = combine_encoded(enc, req.combine, None if req.per_image else req.image_weights)
                uncond = adapter.negative_inputs(enc, encoder)
                scale = req.faceid_v2_weight
                # a pair display, not tuple(<generator>): CPython grows that tuple in place between
                # the (slow) projections, and fails with SystemError if another thread meanwhile holds
                # a reference to it (gc.get_objects(), as memory profilers call; CPython gh-107137)
                pairs.append((self._project(adapter, enc, place, scale), self._project(adapter, uncond, place, scale)))
        cond, uncond = (torch.cat(side) for side in zip(*pairs, strict=True))
        return encoder_name, cond, uncond

    @staticmethod
    def _project(adapter: IPAdapterModel, enc: EncodedImages, place: Placement, shortcut: float = 1.0) -> torch.Tensor:
        adapter.to(place.device)  # back to the CPU when ``running_on`` ends (offload)
        tokens = adapter.project(enc.map(lambda t: t.to(place.device)), shortcut)
        return tokens.reshape(1, -1, tokens.shape[-1])

    def prepare_unit(self, req: UnitRequest, unet: UNetSignature, place: Placement) -> PreparedUnit | ContextUnit:
        """A unit ready for sampling: K/V for an IP-Adapter, context tokens for Flux Redux."""
        with self.lock:
            return self._prepare_unit(req, unet, place)

    def _prepare_unit(self, req: UnitRequest, unet: UNetSignature, place: Placement) -> PreparedUnit | ContextUnit:
        if req.model:
            info = self._adapter(req.model).info
            try:
                check_unet(info, unet, f"'{req.model}'")
            except IncompatibleModelError as exc:
                raise IncompatibleModelError(f"{exc} {self._fitting_models(unet)}") from exc
            if info.variant == "flux-redux":
                return self._prepare_redux(req, unet, place)
        weights = layer_weights(req, unet)
        mask = region_mask(req)
        alt_layers: frozenset[int] = frozenset()
        if req.composition_images:
            layout = composition_transformers(unet.transformer_blocks)
            alt_layers = frozenset(n for n, t in enumerate(unet.transformer_index) if t in layout)
        found = self.unit_tokens(req, place)
        adapter, refs, comp = found.adapter, found.references, found.composition
        faces = ()
        if req.show_faces and adapter.info.encoder.output in FACE_OUTPUTS:
            faces = tuple(zip(req.images, self.found_faces(req, adapter), strict=True))  # cached: no second detection
        kv = UnitKV(
            adapter, refs.tokens.cond, refs.tokens.uncond, place.device, place.dtype,
            weights.swapped_layers(unet.transformer_index), head_dim=unet.head_dim, groups=refs.tokens.groups,
            alt=comp.tokens if comp is not None else None, alt_layers=alt_layers,
        )  # fmt: skip
        description = f"{adapter.info.name} · {adapter.info.family} · {req.model} + {found.encoder_name}"
        return PreparedUnit(
            req.number,
            adapter,
            kv,
            req.weight,
            req.start,
            req.end,
            req.mode,
            description,
            layer_weights=weights.per_layer(unet.transformer_index),
            mask=mask,
            weight_type=WeightType(req.weight_type).value,
            lora=adapter.lora,
            lora_strength=req.lora_strength,
            faces=faces,
            tiling=refs.tiling,
            bands=BandMasks(refs.tiling, mask) if refs.tiling is not None else None,
            alt_layers=alt_layers,
            alt_bands=BandMasks(comp.tiling, mask) if comp is not None and comp.tiling is not None else None,
        )

    def _prepare_redux(self, req: UnitRequest, unet: UNetSignature, place: Placement) -> ContextUnit:
        """Redux: its tokens (downsampled; multiplied by the strength in ``scale`` mode), built once."""
        layer_weights(req, unet)  # weight types and layer weights do not apply on Flux
        if req.weight < 0:
            raise IPAdapterError(
                f"Redux's strength is the unit's weight, which is {req.weight:g}; use 0 or more "
                "(0 adds nothing, 1 is the reference as trained)."
            )
        if req.embeds is not None:
            raise IPAdapterError("Redux units take reference images, not embeds from /encode. Send the image itself.")
        if req.negative_images or req.noise > 0 or req.noise_blur > 0:
            raise IPAdapterError(
                "Redux tokens go to the positive conditioning only, so negative_image and noise do not apply. Remove them."
            )
        if not DOWNSAMPLE_RANGE[0] <= req.redux_downsample <= DOWNSAMPLE_RANGE[1]:
            raise IPAdapterError(f"redux_downsample must be 1 to 9, not {req.redux_downsample}.")
        mask = region_mask(req)
        adapter, encoder_name, cond = self._redux_tokens(req, place)
        if req.redux_strength_mode is StrengthMode.SCALE and req.weight != 1:
            cond = cond * req.weight
        return ContextUnit(
            req.number,
            cond.to(place.device, place.dtype),
            req.weight,
            StrengthMode(req.redux_strength_mode),
            req.start,
            req.end,
            mask,
            f"{adapter.info.name} · {req.model} + {encoder_name}",
            downsample=req.redux_downsample,
        )

    def prepare(self, requests: Sequence[UnitRequest], unet: UNetSignature, place: Placement) -> Job:
        """All units or none: the first failing unit raises, naming its number."""
        units, context = [], []
        with self.lock:
            for req in requests:
                try:
                    unit = self._prepare_unit(req, unet, place)
                except IPAdapterError as exc:
                    raise IPAdapterError(f"IP-Adapter unit {req.number}: {exc}") from exc
                (context if isinstance(unit, ContextUnit) else units).append(unit)
        self._kv.update(unit.kv for unit in units)
        return Job(units, upcast=place.upcast_attention, context=context)
