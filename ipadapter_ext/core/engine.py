"""From unit requests to a ready :class:`~.job.Job`: resolve, check, load, encode, project.

The engine lives as long as the WebUI process and owns the explicit, bounded caches: detected
model files (in the registry), loaded models, and image embeddings. Everything a generation
needs is computed here once, before sampling; a mismatch or a missing input is an
:class:`IPAdapterError` naming the unit, the problem and the fix.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .attend.kv import TokenSet, UnitKV
from .attend.masks import RegionMask
from .attend.weights import WeightType, composition_transformers, transformer_weights
from .encode.cache import EmbeddingCache
from .encode.combine import combine_encoded
from .encode.encoder import ClipVisionEncoder
from .encode.faces import FaceReferences, FoundFace
from .encode.references import encode_references
from .encode.tiles import BandMasks
from .errors import IncompatibleModelError, IPAdapterError
from .job import Job, PreparedUnit
from .load.adapter import IPAdapterModel
from .load.compat import UNetSignature, check_encoder, check_unet
from .load.detect import EncoderOutput
from .load.registry import ModelRegistry
from .project.projections import EncodedImages
from .reference_tokens import ReferenceTokens, TokenBuilder
from .request import AUTO, UnitRequest

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


def _refuse_image_craft(req: UnitRequest, why: str) -> None:
    """Tiles, reference masks, sharpening and composition images shape how CLIP sees an image."""
    given = [
        name
        for name, on in (
            ("crop 'tiles'", req.crop == "tiles"),
            ("reference_mask", req.reference_mask is not None),
            ("sharpening", req.sharpening > 0),
            ("composition_image", bool(req.composition_images)),
        )
        if on
    ]
    if given:
        raise IPAdapterError(
            f"{why}, so {', '.join(given)} cannot apply. Remove {'it' if len(given) == 1 else 'them'}."
        )


class LoadedModels:
    """Loaded adapters and encoders keyed by (kind, path, size, mtime); least recently used first out."""

    def __init__(self, max_items: int = 3) -> None:
        self.max_items = max_items
        self._items: OrderedDict[tuple, object] = OrderedDict()

    def get(self, kind: str, path: Path, load: Callable[[], object]) -> object:
        stat = path.stat()
        key = (kind, str(path), stat.st_size, stat.st_mtime_ns)
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        # Building modules draws their random initial weights from torch's global generator, which
        # the WebUI seeds per generation and keeps drawing from (ancestral samplers' noise, the
        # VAE's latent sample in img2img). Loading must not move it, or the first generation after
        # a load would differ from the same seed later.
        with torch.random.fork_rng(devices=[]):
            value = load()
        self._items[key] = value
        while len(self._items) > self.max_items:
            self._items.popitem(last=False)
        return value

    def clear(self) -> None:
        self._items.clear()


@dataclass
class Placement:
    """Where the UNet runs; encoders and K/V follow it."""

    device: torch.device
    dtype: torch.dtype
    encoder_dtype: torch.dtype = torch.float32
    offload_encoder: bool = False  # --medvram/--lowvram: the encoder leaves the device after use
    upcast_attention: bool = False


class Engine:
    def __init__(
        self,
        registry: ModelRegistry,
        embedding_cache_size: int = 32,
        loaded_models: int = 3,
        faces: FaceReferences | None = None,
    ) -> None:
        self.registry = registry
        self.embeddings = EmbeddingCache(embedding_cache_size)
        self.loaded = LoadedModels(loaded_models)
        #: Face analysis for the FaceID adapters (``None``: a host that offers none).
        self.faces = faces

    def _adapter(self, name: str) -> IPAdapterModel:
        entry = self.registry.adapter(name)
        if entry.info is None:
            raise IPAdapterError(f"model '{name}' cannot be used: {entry.error}")
        return self.loaded.get("adapter", entry.path, lambda: IPAdapterModel.from_file(entry.path))  # type: ignore[return-value]

    def _encoder(self, req: UnitRequest, adapter: IPAdapterModel, place: Placement) -> tuple[str, ClipVisionEncoder]:
        entry = self.registry.auto_encoder(req.model) if req.encoder == AUTO else self.registry.encoder(req.encoder)
        if entry.spec is None:
            raise IPAdapterError(f"encoder '{entry.name}' cannot be used: {entry.error}")
        check_encoder(adapter.info, entry.spec, f"'{req.model}'", entry.name)
        encoder = self.loaded.get(
            "encoder", entry.path, lambda: ClipVisionEncoder.from_file(entry.path, "cpu", place.encoder_dtype)
        )
        return entry.name, encoder  # type: ignore[return-value]

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
        if not req.model:
            raise IPAdapterError("no model selected. Choose an IP-Adapter model (refresh the list after adding files).")
        if not req.images and req.embeds is None:
            raise IPAdapterError("no reference image. Drop an image into the unit or disable it.")
        adapter = self._adapter(req.model)
        if req.embeds is not None:
            _refuse_image_craft(req, "embeds already are tokens")
            return UnitTokens(adapter, "embeds", ReferenceTokens(TokenSet(*self._embeds_tokens(req, adapter))))
        if adapter.info.encoder.output in FACE_OUTPUTS:
            _refuse_image_craft(
                req, f"'{req.model}' is a FaceID model, whose face is found and cropped by the face analysis"
            )
            name, cond, uncond = self._face_tokens(req, adapter, place)
            return UnitTokens(adapter, name, ReferenceTokens(TokenSet(cond, uncond)))
        encoder_name, encoder = self._encoder(req, adapter, place)
        encoder.to(place.device)
        adapter.to(place.device)
        try:
            builder = TokenBuilder(
                req, adapter, encoder, self.embeddings, lambda enc: self._project(adapter, enc, place)
            )
            return UnitTokens(adapter, encoder_name, builder.references(), builder.composition())
        finally:
            if place.offload_encoder:
                encoder.to("cpu")

    def found_faces(self, req: UnitRequest) -> list[FoundFace]:
        """The face of each reference of a FaceID unit (detected once per photo, then cached)."""
        if self.faces is None:
            raise IPAdapterError("this host offers no face analysis, which FaceID models need.")
        return self.faces.find_all(req.images, f"IP-Adapter unit {req.number}")

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
        found = self.found_faces(req)
        raw = adapter.info.variant in RAW_FACE_VARIANTS
        groups = [[f] for f in found] if req.per_image else [found]
        encoder_name, encoder = "face analysis", None
        if adapter.info.encoder.output is EncoderOutput.FACE_AND_PENULTIMATE:
            encoder_name, encoder = self._encoder(req, adapter, place)
            encoder_name = f"face analysis + {encoder_name}"
            encoder.to(place.device)
        pairs = []
        try:
            for group in groups:
                face = torch.stack([f.embedding(normalised=not raw) for f in group])
                hidden = None
                if encoder is not None:
                    hidden = encode_references(encoder, [f.crop for f in group], "center", self.embeddings).hidden
                enc = EncodedImages(face=face, hidden=hidden)
                enc = combine_encoded(enc, req.combine, None if req.per_image else req.image_weights)
                uncond = adapter.negative_inputs(enc, encoder)
                adapter.to(place.device)
                scale = req.faceid_v2_weight
                pairs.append(tuple(self._project(adapter, e, place, scale) for e in (enc, uncond)))
        finally:
            if encoder is not None and place.offload_encoder:
                encoder.to("cpu")
        cond, uncond = (torch.cat(side) for side in zip(*pairs, strict=True))
        return encoder_name, cond, uncond

    @staticmethod
    def _project(adapter: IPAdapterModel, enc: EncodedImages, place: Placement, shortcut: float = 1.0) -> torch.Tensor:
        tokens = adapter.project(enc.map(lambda t: t.to(place.device)), shortcut)
        return tokens.reshape(1, -1, tokens.shape[-1])

    @staticmethod
    def _embeds_tokens(req: UnitRequest, adapter: IPAdapterModel) -> tuple[torch.Tensor, torch.Tensor]:
        cond, uncond, made_for = req.embeds  # type: ignore[misc]
        if made_for != req.model or cond.shape[-1] != adapter.info.context_dim:
            raise IPAdapterError(
                f"the embeds were made for model '{made_for}' ({cond.shape[-1]}-wide tokens), not '{req.model}'. "
                "Use that model, or encode the image again with this one."
            )
        if req.negative_images or req.noise > 0 or req.noise_blur > 0:
            raise IPAdapterError(
                "embeds already hold their uncond tokens, so negative_image and noise cannot apply. "
                "Send them to /ipadapter/v1/encode with the image instead, or send the image itself."
            )
        return cond, uncond

    def prepare_unit(self, req: UnitRequest, unet: UNetSignature, place: Placement) -> PreparedUnit:
        if req.model:
            info = self._adapter(req.model).info
            try:
                check_unet(info, unet, f"'{req.model}'")
            except IncompatibleModelError as exc:
                raise IncompatibleModelError(f"{exc} {self._fitting_models(unet)}") from exc
        weights = self._layer_weights(req, unet)
        mask = self._mask(req)
        alt_layers: frozenset[int] = frozenset()
        if req.composition_images:
            layout = composition_transformers(unet.transformer_blocks)
            alt_layers = frozenset(n for n, t in enumerate(unet.transformer_index) if t in layout)
        found = self.unit_tokens(req, place)
        adapter, refs, comp = found.adapter, found.references, found.composition
        faces = ()
        if req.show_faces and adapter.info.encoder.output in FACE_OUTPUTS:
            faces = tuple(zip(req.images, self.found_faces(req), strict=True))  # cached: no second detection
        kv = UnitKV(
            adapter, refs.tokens.cond, refs.tokens.uncond, place.device, place.dtype,
            weights.swapped_layers(unet.transformer_index), groups=refs.tokens.groups,
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

    @staticmethod
    def _layer_weights(req: UnitRequest, unet: UNetSignature):
        if unet.arch == "flux" and (req.weight_type != WeightType.LINEAR or req.layer_weights is not None):
            raise IPAdapterError(
                "weight types and layer weights address the SD UNet's blocks, which Flux does not have. "
                "On Flux use the 'linear' weight type without layer_weights (weight, start and end still apply)."
            )
        if not unet.transformer_index:  # a host that cannot map its layers: only a uniform weight
            if req.weight_type != WeightType.LINEAR or req.layer_weights is not None:
                raise IPAdapterError(
                    "this UNet's layers could not be mapped to transformer blocks, so only the 'linear' weight "
                    "type without layer_weights can be used."
                )
            return transformer_weights(WeightType.LINEAR, req.weight, ("input",) * len(unet.attn2_widths))
        return transformer_weights(
            req.weight_type, req.weight, unet.transformer_blocks, req.composition_weight, req.layer_weights,
            style_boost=req.style_boost, composition_boost=req.composition_boost,
        )  # fmt: skip

    @staticmethod
    def _mask(req: UnitRequest) -> RegionMask | None:
        if req.mask is None:
            return None
        if float(req.mask.max()) <= 0:
            raise IPAdapterError(
                "the mask is black everywhere, so the unit would do nothing. Paint white where the reference "
                "should act, or remove the mask."
            )
        return RegionMask(req.mask)

    def prepare(self, requests: Sequence[UnitRequest], unet: UNetSignature, place: Placement) -> Job:
        """All units or none: the first failing unit raises, naming its number."""
        units = []
        for req in requests:
            try:
                units.append(self.prepare_unit(req, unet, place))
            except IPAdapterError as exc:
                raise IPAdapterError(f"IP-Adapter unit {req.number}: {exc}") from exc
        return Job(units, upcast=place.upcast_attention)
