"""``MINeRF``: one dynamic face NeRF for many identities.

The model owns the shared field (:class:`fastminerf.field.MINeRFField`), one learned code per identity, one
learned latent code per training frame, and one occupancy grid covering every identity and expression seen.
:meth:`MINeRF.render_rays` marches rays through the occupancy grid (native marcher), evaluates the field at
the packed samples and composites them (native compositor) over each ray's background colour (the identity's
static background image at the pixel, as NeRFace).

Frame codes: frame ``b`` of the training split (the flat index of its frame table) has code row ``b``. A frame
outside training (val, novel, an expression transferred from someone else) has no learned code; by default
:meth:`render_rays` uses the **mean training frame code of the ray's identity** (zeros for an identity without
training frames), which is what the frame codes of that identity have in common. Pass ``frame_code`` explicitly
(a tensor of codes, or training frame indices) to override.

Memory per identity: ``4 * D`` bytes (its code) plus ``4 * Cf`` bytes per training frame; the hash grid, heads
and occupancy grid are shared, so 1,000 identities with 100 frames each add ``1000 * (32 + 100 * 16) * 4`` bytes
= 6.5 MB to the defaults. A torso layer (``ModelConfig.torso``) adds its image, ``16 * R^2`` bytes per identity
(64 KB at the ``video`` preset's R = 64: 64 MB for 1,000 identities), and its ``frame_shift`` 8 bytes per training
frame.

Shapes: N rays, S samples, I identities, E expression size, D identity-code size, Cf frame-code size,
B training frames.
"""
from __future__ import annotations

import contextlib
import functools
import math
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .backend import BackendError, resolve
from .config import ModelConfig, identity_index
from .data.layout import DEFAULT_AABB
from .field import MINeRFField, heads_backend
from .nn import OccupancyGrid, TorsoLayer
from .nn.torso import in_head_region, last_frames_mean
from .ops import RaySamples, composite, distortion_loss
from .ops.occupancy import visual_hulls

__all__ = ["MINeRF", "IDENTITY_CODE_INIT_STD"]

IDENTITY_CODE_INIT_STD = 0.1
"""Standard deviation of new identity codes (large enough that identities differ from the first step)."""


def _offsets(ray_indices: torch.Tensor, n_rays: int) -> torch.Tensor:
    """(N+1,) int64 CSR offsets of sorted ray indices (S,)."""
    offsets = torch.zeros(n_rays + 1, dtype=torch.int64, device=ray_indices.device)
    offsets[1:] = torch.cumsum(torch.bincount(ray_indices, minlength=n_rays), 0)
    return offsets


def _before_termination(sigmas: torch.Tensor, t_starts: torch.Tensor, t_ends: torch.Tensor, offsets: torch.Tensor,
                        threshold: float) -> torch.Tensor:
    """(S,) bool: samples whose transmittance ``T_i = exp(-sum_{j<i} sigma_j delta_j)`` (within their ray) is still
    ``>= threshold``, i.e. those :func:`fastminerf.ops.composite` gives a weight. Float64 prefix sums."""
    if threshold <= 0:
        return torch.ones_like(sigmas, dtype=torch.bool)
    sd = (sigmas.double() * (t_ends - t_starts).double())
    excl = torch.cumsum(sd, 0) - sd  # exclusive prefix sum over all samples
    counts = offsets[1:] - offsets[:-1]
    starts = offsets[:-1].clamp(max=max(sd.numel() - 1, 0))
    base = torch.repeat_interleave(excl[starts], counts, output_size=sd.numel())
    return ~((excl - base) > -math.log(threshold))  # NaN kept: a NaN density reaches the compositing and the loss


def _keep_before_termination(density_fn, samples: RaySamples, threshold: float, stages: Sequence[int]) -> torch.Tensor:
    """(S,) bool: the samples before early termination (as :func:`_before_termination`), evaluating
    ``density_fn(indices (M,) int64 into the samples, or None for all of them) -> (M,)`` front to back: first the samples at positions
    ``< stages[0]`` of their ray, then up to ``stages[1]``, ... then the rest, each stage only on rays still
    transparent. Samples behind a ray's termination are never evaluated (their density counts as 0; they are behind
    it whatever it is)."""
    ray = samples.ray_indices
    if threshold <= 0 or not stages:
        return _before_termination(density_fn(None), samples.t_starts, samples.t_ends, samples.offsets, threshold)
    sigma = torch.zeros(ray.shape[0], dtype=torch.float32, device=ray.device)
    position = torch.arange(ray.shape[0], device=ray.device) - samples.offsets[:-1].index_select(0, ray)
    optical = -math.log(threshold)
    depth = torch.zeros(samples.offsets.shape[0] - 1, dtype=torch.float64, device=ray.device)  # per ray so far
    lo = 0
    for hi in list(stages) + [None]:
        sel = position >= lo if hi is None else (position >= lo) & (position < hi)
        sel &= ~(depth.index_select(0, ray) > optical)  # the ray is still transparent (or NaN: kept, as above)
        idx = torch.nonzero(sel)[:, 0]
        if idx.numel():
            s = density_fn(idx)
            sigma.index_copy_(0, idx, s.to(sigma.dtype))
            sd = s.double() * (samples.t_ends.index_select(0, idx) - samples.t_starts.index_select(0, idx)).double()
            depth.index_add_(0, ray.index_select(0, idx), sd)
        if hi is None:
            break
        lo = hi
    return _before_termination(sigma, samples.t_starts, samples.t_ends, samples.offsets, threshold)


def built_in_float32(init):
    """An ``nn.Module.__init__`` (or a training loop) that makes its parameters, buffers and tensors float32 (what the
    kernels compute in) whatever torch's default dtype: a caller's ``torch.set_default_dtype(torch.float64)`` is set
    aside while it runs and then put back (only then: a float32 default is left alone)."""
    @functools.wraps(init)
    def wrapper(*args, **kwargs):
        before = torch.get_default_dtype()
        if before == torch.float32:
            return init(*args, **kwargs)
        torch.set_default_dtype(torch.float32)
        try:
            return init(*args, **kwargs)
        finally:
            torch.set_default_dtype(before)
    return wrapper


@contextlib.contextmanager
def training_torch_state(devices: Sequence[int] = ()) -> Iterator[None]:
    """The torch state a training call runs in and gives back: the caller's global random stream (of the CPU and the
    CUDA ``devices``) forked, so the call may seed it, and gradients on whatever the caller's mode (a serving
    process's ``torch.set_grad_enabled(False)``, a ``torch.no_grad()`` or ``torch.inference_mode()`` block)."""
    with torch.random.fork_rng(devices=list(devices)), torch.inference_mode(False), torch.enable_grad():
        yield


class MINeRF(nn.Module):
    """The MI-NeRF model: shared field + identity codes + frame codes + occupancy grid.

    Args:
        cfg: :class:`fastminerf.config.ModelConfig`.
        expression_dim: E.
        identity_names: (I,) names; identity id = position.
        frame_identity: (B,) int64 identity id of each training frame (one frame code per entry).
        aabb: head box (6,) the grids cover when ``cfg.aabb`` is None (default: a cube of side 3 at the origin).
        expression_space: the training data's expression space, or None when unknown.

    Buffers: ``aabb`` (6,), ``frame_identity`` (B,), the occupancy grid's. Parameters: ``identity_codes.weight``
    (I, D), ``frame_codes.weight`` (B, Cf), the field's, and with ``cfg.torso.resolution > 0`` the torso layer's
    ``torso.texture`` (I, R, R, 4) (the head box then ends at ``cfg.torso.floor``), and with ``cfg.torso.frame_shift``
    too ``torso_shift`` (B, 2), each training frame's shift of the layer in units of
    :data:`fastminerf.nn.torso.SHIFT_SCALE` of the image (None otherwise).
    """

    @built_in_float32
    def __init__(
        self,
        cfg: ModelConfig,
        expression_dim: int,
        identity_names: Sequence[str],
        frame_identity: torch.Tensor | Sequence[int],
        aabb: Optional[Sequence[float]] = None,
        expression_space: Optional[str] = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.expression_dim = int(expression_dim)
        self.expression_space: Optional[str] = expression_space
        """The expression space of the training data (``expression_space`` of the layout), None when unknown;
        kept in checkpoints, and data in another space is refused (``check_expression_space``)."""
        names = list(identity_names)
        if len(set(names)) != len(names):
            raise ValueError(f"identity names must be unique, got {names}")
        self.identity_names: List[str] = names
        box = cfg.aabb if cfg.aabb is not None else (aabb if aabb is not None else DEFAULT_AABB)
        box = [float(v) for v in box]
        if len(box) != 6 or not all(box[k] < box[k + 3] for k in range(3)):
            raise ValueError(f"aabb must be [xmin, ymin, zmin, xmax, ymax, zmax] with min < max, got {box}")
        self.torso: Optional[TorsoLayer] = None
        if cfg.torso.resolution > 0:  # the field keeps the head, the layer the person below the floor
            if not box[1] <= cfg.torso.floor < box[4]:  # equal: a box cut before (a checkpoint's)
                raise ValueError(f"model.torso.floor {cfg.torso.floor} must lie inside the head box's y range "
                                 f"({box[1]:.3f}, {box[4]:.3f})")
            box[1] = cfg.torso.floor
            self.torso = TorsoLayer(len(names), cfg.torso.resolution, cfg.torso.alpha_init)
        self.register_buffer("aabb", torch.tensor(box, dtype=torch.float32))
        fi = torch.as_tensor(frame_identity, dtype=torch.int64).reshape(-1)
        if fi.numel() and (fi.min() < 0 or fi.max() >= len(names)):
            raise ValueError("frame_identity holds an identity id outside [0, I)")
        self.register_buffer("frame_identity", fi.clone())
        fc = cfg.field
        if cfg.backbone == "fast":
            self.field = MINeRFField(fc, self.expression_dim)
        elif cfg.backbone == "nerface":  # the slow baseline (fastminerf/nerface.py): no occupancy grid in use
            from .nerface import NeRFaceField

            self.field = NeRFaceField(fc, cfg.nerface, self.expression_dim)
        else:
            raise ValueError(f"model.backbone must be 'fast' or 'nerface', got {cfg.backbone!r}")
        self.identity_codes = nn.Embedding(len(names), fc.identity_code_dim)
        nn.init.normal_(self.identity_codes.weight, std=IDENTITY_CODE_INIT_STD)
        self.frame_codes = nn.Embedding(fi.numel(), fc.frame_code_dim)
        nn.init.zeros_(self.frame_codes.weight)
        if cfg.torso.shift_from_last < 0:
            raise ValueError(f"model.torso.shift_from_last must be >= 0, got {cfg.torso.shift_from_last}")
        shifted = self.torso is not None and cfg.torso.frame_shift
        self.torso_shift = nn.Parameter(torch.zeros(fi.numel(), 2)) if shifted else None
        self.occupancy = OccupancyGrid(box, cfg.grid_resolution, cfg.grid_levels, backend=cfg.grid_backend)
        # An untrained model samples the whole box (every bit set), but with occupancy values of 0 so that the first
        # update replaces them (values of 1 would decay for ~90 updates before any cell could be skipped).
        self.occupancy.mark_all()
        self.occupancy.occs.zero_()
        if self.torso is not None:  # the shoulders beside the neck column are the layer's, for good
            self.occupancy.carve(self.head_region(self.occupancy.cell_centers()))

    # ------------------------------------------------------------------------------------------------------
    # Identities and frames

    @property
    def num_identities(self) -> int:
        """I."""
        return len(self.identity_names)

    @property
    def diagonal(self) -> float:
        """Length of the box's diagonal (head units)."""
        side = (self.aabb[3:] - self.aabb[:3]).tolist()
        return math.sqrt(sum(s * s for s in side))

    @property
    def step_size(self) -> float:
        """Ray-marching step of training (and of occupancy updates): the box diagonal / ``cfg.render_steps``."""
        return self.diagonal / self.cfg.render_steps

    @property
    def eval_steps(self) -> int:
        """Ray-marching steps across the box outside training: ``cfg.eval_render_steps`` when set, else
        ``cfg.render_steps``."""
        return self.cfg.eval_render_steps if self.cfg.eval_render_steps > 0 else self.cfg.render_steps

    @property
    def render_step_size(self) -> float:
        """The step rays are marched with: :attr:`step_size` in training, the box diagonal / :attr:`eval_steps` in
        eval mode."""
        return self.step_size if self.training else self.diagonal / self.eval_steps

    def identity_index(self, name: str) -> int:
        """Id of an identity by name; raises ``KeyError`` naming the known names (:func:`fastminerf.config.identity_index`,
        a few of a thousand)."""
        return identity_index(self.identity_names, name)

    @torch.no_grad()
    def add_identities(self, names: Sequence[str], frame_identity: torch.Tensor | Sequence[int] = ()) -> int:
        """Grow the model by new identities (codes initialised to the mean of the existing codes, so a new
        person starts from the average face) and new training frames (zero codes).

        Args:
            names: new identity names (unique, not already known).
            frame_identity: (B_new,) identity id of each new training frame (ids of the grown model).

        Returns:
            The flat index of the first new frame code (new frames are ``first:first + B_new``).

        Parameters are replaced by larger ones: build optimizers after calling this.
        """
        names = list(names)
        clash = [n for n in names if n in self.identity_names] or [n for n in names if names.count(n) > 1]
        if clash:
            raise ValueError(f"identities already known or repeated: {sorted(set(clash))}")
        # checked before anything grows: a refused call leaves the model as it was (not holding the new names without
        # their frames, which would refuse the corrected call as "already known")
        fi = torch.as_tensor(frame_identity, dtype=torch.int64, device=self.frame_identity.device).reshape(-1)
        if fi.numel() and (fi.min() < 0 or fi.max() >= self.num_identities + len(names)):
            raise ValueError("frame_identity holds an identity id outside the grown model")
        old = self.identity_codes.weight
        start_code = old.mean(0, keepdim=True) if old.shape[0] else old.new_zeros(1, old.shape[1])
        grown = torch.cat([old, start_code.expand(len(names), -1)], 0)
        self.identity_codes = nn.Embedding.from_pretrained(grown.clone(), freeze=False)
        self.identity_names = self.identity_names + names
        if self.torso is not None:
            self.torso.grow(len(names))
        first = self.frame_identity.numel()
        self.frame_identity = torch.cat([self.frame_identity, fi])
        codes = torch.cat([self.frame_codes.weight, self.frame_codes.weight.new_zeros(fi.numel(), self.frame_codes.weight.shape[1])], 0)
        self.frame_codes = nn.Embedding.from_pretrained(codes.clone(), freeze=False)
        if self.torso_shift is not None:
            self.torso_shift = nn.Parameter(torch.cat([self.torso_shift.detach(), self.torso_shift.new_zeros(fi.numel(), 2)]))
        return first

    def mean_frame_codes(self) -> torch.Tensor:
        """(I, Cf) the code of each identity's frames outside training: the mean code of its last
        ``cfg.field.frame_code_from_last`` training frames, 0 (the default) all of them; zeros where an identity has
        no frames."""
        return last_frames_mean(self.frame_codes.weight, self.frame_identity, self.num_identities,
                                self.cfg.field.frame_code_from_last)

    def _frame_code(self, identity: torch.Tensor, frame_code: Optional[torch.Tensor]) -> torch.Tensor:
        if frame_code is None:
            return self.mean_frame_codes().index_select(0, identity)
        if frame_code.dtype in (torch.int32, torch.int64):
            if frame_code.numel() and (frame_code.min() < 0 or frame_code.max() >= self.frame_codes.num_embeddings):
                raise IndexError(f"frame index outside the {self.frame_codes.num_embeddings} training frames")
            return self.frame_codes(frame_code.long())
        if frame_code.shape != (identity.shape[0], self.frame_codes.weight.shape[1]):
            raise ValueError(f"frame_code must be (N,) frame indices or (N, {self.frame_codes.weight.shape[1]}) codes, "
                             f"got {tuple(frame_code.shape)}")
        return frame_code.to(self.frame_codes.weight.dtype)  # codes in another dtype: the model's, as the expressions

    def _torso_frame_shift(self, identity: torch.Tensor, frame_code: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """(N,) rays' torso shifts (N, 2): their training frame's, or for rays outside training (``frame_code`` None or
        explicit codes) their identity's last frames' mean (``cfg.torso.shift_from_last``); None without shifts."""
        if self.torso_shift is None:
            return None
        if frame_code is not None and frame_code.dtype in (torch.int32, torch.int64):
            return self.torso_shift.index_select(0, frame_code.long())  # indices checked by _frame_code
        held = last_frames_mean(self.torso_shift, self.frame_identity, self.num_identities, self.cfg.torso.shift_from_last)
        return held.index_select(0, identity)

    def condition(self, identity: torch.Tensor, expression: torch.Tensor, frame_code: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Per-ray conditioning of the field: identity (N,) int64, expression (N, E), frame_code (see
        :meth:`render_rays`) -> (N, C + Cf)."""
        if identity.numel() and (identity.min() < 0 or identity.max() >= self.num_identities):
            raise IndexError(f"identity id outside [0, {self.num_identities}) (known: {self.identity_names})")
        if expression.dim() != 2 or expression.shape[1] != self.expression_dim:
            raise ValueError(f"expression must have shape (N, {self.expression_dim}), got {tuple(expression.shape)}")
        codes = self.identity_codes(identity)
        return self.field.condition(expression.to(codes.dtype), codes, self._frame_code(identity, frame_code))

    # ------------------------------------------------------------------------------------------------------
    # Rendering

    def normalize_points(self, points: torch.Tensor) -> torch.Tensor:
        """Head-space points (M, 3) -> [0, 1]^3 over the box (clamped)."""
        lo, hi = self.aabb[:3], self.aabb[3:]
        return ((points - lo) / (hi - lo)).clamp(0.0, 1.0)

    def backends(self, device: torch.device) -> Dict[str, str]:
        """What computes each part of the model on ``device`` (``fastminerf info``): component -> "native", "torch",
        "tcnn" or "nerfacc", or "cannot run (why)"; ``heads`` where the backend is native but a head runs as torch ops
        names each kind, e.g. "native (density head), torch (colour head: 2 hidden layers)". The nerface backbone is PyTorch MLPs: ``{"field": "torch"}``."""
        if self.cfg.backbone != "fast":
            return {"field": "torch"}
        device = torch.device(device)
        parts = (("encoding", lambda: self.field.encoding.resolved_backend(device)),
                 ("grid", lambda: self.occupancy.resolved_backend(device)),
                 ("heads", lambda: heads_backend(self.cfg.field.backend, (("density", self.field.density_head),
                                                                         ("colour", self.field.color_head)), device.type)),
                 ("compositing", lambda: self._composite_backend(device)))
        out = {}
        for name, which in parts:
            try:
                out[name] = which()
            except (BackendError, ImportError) as exc:  # ImportError: the native extension's NativeExtensionError
                out[name] = f"cannot run ({exc})"
        return out

    def _composite_backend(self, device: torch.device) -> str:
        """The compositing backend: the marcher's key (``grid_backend``), resolved by the one switch (``torch`` gives
        the reference; it chose native wherever the extension loaded, whatever the config said)."""
        return resolve(self.cfg.grid_backend, "composite", device.type)

    def _render(self, origins, directions, near, far, cond, identity, background,
                distortion: bool = False) -> Dict[str, torch.Tensor]:
        cfg = self.cfg
        if cfg.backbone == "nerface":
            return self.field.render(origins, directions, near, far, cond, background, self.aabb)
        samples = self.occupancy.sample(origins, directions, near, far, step_size=self.render_step_size,
                                        cone_angle=cfg.cone_angle, max_samples_per_ray=cfg.max_samples_per_ray)
        if samples.t_starts.dtype != origins.dtype:  # the marcher works in float32; a model in float64 (model.double())
            dt = origins.dtype
            samples = samples._replace(t_starts=samples.t_starts.to(dt), t_ends=samples.t_ends.to(dt))
        ray = samples.ray_indices
        counts = samples.counts  # marched samples per ray (before pruning)
        t_mid = (samples.t_starts + samples.t_ends) * 0.5
        points = origins.index_select(0, ray) + t_mid[:, None] * directions.index_select(0, ray)
        n = origins.shape[0]
        if ray.numel() == 0:  # nothing to evaluate: the background shows everywhere
            zero = origins.new_zeros(n)
            out = dict(rgb=background.clone(), opacity=zero, depth=zero.clone(), samples=samples.counts)
            return dict(out, distortion=zero.clone()) if distortion else out
        x = self.normalize_points(points)
        # Without gradients (rendering) the density pass of the pruning below is the density pass of the field: its
        # outputs are kept and only the colour pass runs on the samples that stay.
        reuse = not torch.is_grad_enabled()
        feats: Optional[Tuple[torch.Tensor, ...]] = None  # (sigma, geometry features, grid points) of every sample
        if cfg.prune_samples:
            # nerfacc's two-pass trick: densities without gradients first, then drop the samples behind early
            # termination (they would get weight 0 anyway) before the full pass. The first pass itself goes front to
            # back in stages, so a ray that turns opaque early is not evaluated behind its surface.
            with torch.no_grad():
                def density(idx: Optional[torch.Tensor]) -> torch.Tensor:
                    nonlocal feats
                    xs, rs = (x, ray) if idx is None else (x.index_select(0, idx), ray.index_select(0, idx))
                    got = self.field.density_features(xs, cond, rs, identity)
                    if reuse and idx is None:
                        feats = got
                    elif reuse:  # a stage: into buffers over all samples (those never evaluated are never kept)
                        if feats is None:
                            feats = tuple(t.new_zeros((x.shape[0],) + t.shape[1:]) for t in got)
                        for buf, t in zip(feats, got):
                            buf.index_copy_(0, idx, t)
                    return got[0]

                keep = _keep_before_termination(density, samples, cfg.transmittance_threshold, cfg.prune_stages)
            if not bool(keep.all()):
                idx = torch.nonzero(keep)[:, 0]
                ray, x = ray.index_select(0, idx), x.index_select(0, idx)
                samples = RaySamples(ray, samples.t_starts.index_select(0, idx), samples.t_ends.index_select(0, idx),
                                     _offsets(ray, n))
                if feats is not None:
                    feats = tuple(t.index_select(0, idx) for t in feats)
        if feats is not None:
            sigma, rgb = feats[0], self.field.colour(feats[1], feats[2], directions, cond, ray, identity)
        else:
            sigma, rgb = self.field(x, directions, cond, ray, identity)
        out = composite(sigma, rgb, samples.t_starts, samples.t_ends, samples.offsets,
                        cfg.transmittance_threshold, backend=self._composite_backend(origins.device))
        color = out.color + (1.0 - out.opacity)[:, None] * background
        depth = out.depth / out.opacity.clamp(min=1e-6)
        result = dict(rgb=color, opacity=out.opacity, depth=depth, samples=counts)
        if distortion:  # distances in units of the box diagonal, so the weight of the loss does not depend on the box
            loss = distortion_loss(out.weights, samples.t_starts, samples.t_ends, samples.offsets)
            result["distortion"] = loss / self.diagonal
        return result

    def render_rays(
        self,
        origins: torch.Tensor,
        directions: torch.Tensor,
        near: torch.Tensor,
        far: torch.Tensor,
        identity: torch.Tensor,
        expression: torch.Tensor,
        frame_code: Optional[torch.Tensor] = None,
        background: Optional[torch.Tensor] = None,
        distortion: bool = False,
        uv: Optional[torch.Tensor] = None,
    ) -> Dict[str, torch.Tensor]:
        """Render N rays.

        Args:
            origins: (N, 3) head-space ray origins.
            directions: (N, 3) unit directions.
            near, far: (N,) distance bounds (``far <= near``: the ray misses and shows the background).
            identity: (N,) int64 identity ids.
            expression: (N, E) expressions (any expression, e.g. another person's, for expression transfer).
            frame_code: None for each identity's mean training frame code (frames outside training), (N,) int64
                training frame indices, or (N, Cf) codes.
            background: (N, 3) colour behind the head; None for black.
            distortion: also return ``distortion`` (N,), the differentiable distortion loss of each ray
                (:func:`fastminerf.ops.distortion_loss`, distances in units of the box diagonal).
            uv: (N, 2) image position of each ray's pixel in [0, 1]^2 (``(column + 0.5) / W``, ``(row + 0.5) / H``);
                needed by a model with a torso layer, which is composited over ``background`` there.

        Returns:
            dict ``rgb`` (N, 3) composited over the background, ``opacity`` (N,) (the head field's), with a torso layer
            ``person_opacity`` (N,) (the field over the layer: the person's), ``depth`` (N,) (expected depth of
            the visible surface, i.e. divided by the opacity), ``samples`` (N,) int64 samples marched per ray
            (``nerface`` backbone: field evaluations per ray, and ``rgb_coarse`` (N, 3), the coarse network's image).
            With gradients enabled the rays are rendered at once (training); without, in chunks of
            ``cfg.chunk_rays`` (same pixels, bounded memory).
        """
        n = origins.shape[0]
        if self.cfg.backbone == "fast":
            self._check_precision(origins.device)
        # Rays in another floating dtype (camera_rays of a float64 camera) are taken in the model's own, as the
        # expressions are in condition(): the heads' weights would refuse them.
        dtype = self.identity_codes.weight.dtype
        origins, directions, near, far = (t.to(dtype) for t in (origins, directions, near, far))
        background = origins.new_zeros(n, 3) if background is None else background.to(dtype)
        for name, t, shape in (("directions", directions, (n, 3)), ("near", near, (n,)), ("far", far, (n,)),
                               ("identity", identity, (n,)), ("background", background, (n, 3))):
            if tuple(t.shape) != shape:
                raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
        if self.torso is not None:
            if uv is None or tuple(uv.shape) != (n, 2):
                raise ValueError(f"this model has a torso layer: render_rays needs uv of shape {(n, 2)} (each ray's "
                                 f"image position), got {None if uv is None else tuple(uv.shape)}")
        if not torch.is_grad_enabled() and n > self.cfg.chunk_rays:
            parts = []
            for a in range(0, n, self.cfg.chunk_rays):
                sl = slice(a, a + self.cfg.chunk_rays)
                fc = None if frame_code is None else frame_code[sl]
                parts.append(self.render_rays(origins[sl], directions[sl], near[sl], far[sl], identity[sl],
                                              expression[sl], fc, background[sl], distortion,
                                              None if uv is None else uv[sl]))
            return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        cond = self.condition(identity, expression, frame_code)
        torso_alpha = None
        if self.torso is not None:
            background, torso_alpha = self.torso.over(identity, uv.to(background.dtype), background,
                                                      self._torso_frame_shift(identity, frame_code))
        out = self._render(origins.contiguous(), directions.contiguous(), near.contiguous(), far.contiguous(), cond,
                           identity, background, distortion)
        if torso_alpha is not None:  # the whole person: the head field over the layer
            out["person_opacity"] = out["opacity"] + (1.0 - out["opacity"]) * torso_alpha
        return out

    def _check_precision(self, device: torch.device) -> None:
        """The fast backbone computes in float32 or float64 only (the compositing, the marcher's samples and the
        native kernels): refuse a model cast to float16 / bfloat16 (``model.half()``) or run under ``torch.autocast``
        here, naming what to do, rather than in an op that names neither. The nerface backbone runs either."""
        for name, p in self.named_parameters():
            if p.dtype not in (torch.float32, torch.float64):
                raise ValueError(f"the fast backbone renders in float32 or float64 only, and the model's parameter "
                                 f"{name!r} is {str(p.dtype).replace('torch.', '')}: keep the model float32 "
                                 f"(model.float()); half precision is not supported, nor torch.autocast")
        try:
            autocast = torch.is_autocast_enabled(device.type)
        except TypeError:  # torch < 2.4 (setup.py allows 2.1): no device argument, CPU autocast asked apart
            autocast = torch.is_autocast_cpu_enabled() if device.type == "cpu" else torch.is_autocast_enabled()
        if autocast:
            raise ValueError(f"the fast backbone renders in float32 or float64 only, and torch.autocast is on for "
                             f"{device.type}: its kernels do not take the autocast's lower precision; render the "
                             f"float32 model outside torch.autocast (or inside torch.autocast({device.type!r}, "
                             f"enabled=False))")

    def render_batch(self, batch, frame_code: Optional[torch.Tensor] = None, distortion: bool = False) -> Dict[str, torch.Tensor]:
        """:meth:`render_rays` on a :class:`fastminerf.data.RayBatch` (``frame_code`` and ``distortion`` as there)."""
        return self.render_rays(batch.origins, batch.directions, batch.near, batch.far, batch.identity,
                                batch.expression, frame_code, batch.background, distortion, batch.uv)

    # ------------------------------------------------------------------------------------------------------
    # Occupancy

    @torch.no_grad()
    def update_occupancy(
        self,
        step: int,
        identity: torch.Tensor,
        expression: torch.Tensor,
        frame: Optional[torch.Tensor] = None,
        generator: Optional[torch.Generator] = None,
        warmup_steps: Optional[int] = None,
    ) -> bool:
        """Every ``cfg.occ_update_every`` steps, update the occupancy grid from the density at one point per
        chosen cell, each point under the conditioning of a random entry of the pool ``identity`` (P,),
        ``expression`` (P, E), ``frame`` (P,) training frame indices (None: mean codes). With nerfacc's
        ``max(decay * occ, new)`` rule the grid holds the union over the conditions drawn, so one grid covers
        every identity and expression seen. Returns whether it updated."""
        cfg = self.cfg
        if step % cfg.occ_update_every != 0 or cfg.backbone != "fast":
            return False
        cond = self.condition(identity, expression, frame)
        step_size = self.step_size

        def density_fn(points: torch.Tensor) -> torch.Tensor:
            pick = torch.randint(cond.shape[0], (points.shape[0],), generator=generator, device=points.device)
            return self.field.density(self.normalize_points(points), cond, pick, identity) * step_size

        return self.occupancy.update(step, density_fn, cfg.occ_threshold, cfg.occ_ema_decay,
                                     cfg.occ_warmup_steps if warmup_steps is None else warmup_steps, n=1,
                                     generator=generator)

    @torch.no_grad()
    def hull_cells(self, c2w: torch.Tensor, intrinsics: torch.Tensor, masks: Sequence[torch.Tensor],
                   keep_unseen: bool = True) -> torch.Tensor:
        """(L*C,) bool: the occupancy cells that some view with a foreground mask may see occupied
        (:func:`fastminerf.ops.occupancy.visual_hull` of each cell, dilated by the cell's size, with its
        ``keep_unseen``) and inside :meth:`head_region`; c2w (F, 4, 4), intrinsics (F, 4), F masks (H, W)."""
        grid = self.occupancy
        centers = grid.cell_centers()
        c = grid.cells_per_level
        # every cascade in one pass over the frames: one per level decoded each mask (a file read) once a level
        hull = torch.cat(visual_hulls([(centers[level * c:(level + 1) * c], grid.cell_radius(level))
                                       for level in range(grid.levels)], c2w, intrinsics, masks, keep_unseen))
        return hull & self.head_region(centers)

    def head_region(self, points: torch.Tensor) -> torch.Tensor:
        """(M,) bool: head-space points (M, 3) the field may hold (all, without a torso layer; with one,
        :func:`fastminerf.nn.torso.in_head_region` of ``cfg.torso``)."""
        if self.torso is None:
            return torch.ones(points.shape[:-1], dtype=torch.bool, device=points.device)
        t = self.cfg.torso
        return in_head_region(points, t.floor, t.neck_top, t.neck_width)

    def extra_repr(self) -> str:
        return f"identities={self.num_identities}, frames={self.frame_identity.numel()}, E={self.expression_dim}"
