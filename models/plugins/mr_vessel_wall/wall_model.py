"""The vessel-wall model: a TorchScript module that finds lumen and outer-wall boundaries.

Input is a batch of square patches of a black-blood MR slice, each centred near one artery's
lumen, with the exact lumen centre and the pixel size. The module casts rays from the centre
at ``angles`` directions, samples each ray by bilinear interpolation, smooths the profile and
takes the lumen boundary as the strongest rising edge (dark lumen to bright wall) and the outer
wall boundary as the first strong falling edge after it (bright wall to surrounding tissue),
both refined to sub-pixel precision as the crossing of the level halfway between the two
sides of the edge. A
circular median over neighbouring rays removes single-ray outliers and a narrow circular
Gaussian the ray-to-ray noise that would otherwise inflate the maximum thickness. From the
two boundary radii per angle it rasterises the lumen and wall masks and computes, in mm,
the lumen and wall areas (polar-area integral) and the maximum wall thickness (largest
distance from an outer-boundary point to the lumen contour).

``export.py`` scripts this module with ``torch.jit.script`` into ``vessel_wall.pt``; the plugin
loads that file through the TorchScript runner, so CPU and CUDA run the same graph.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["VesselWallRayModel"]


class VesselWallRayModel(nn.Module):
    """Ray-casting lumen and wall boundary detector for black-blood vessel-wall MR."""

    def __init__(
        self,
        angles: int = 180,
        max_radius_mm: float = 11.0,
        step_mm: float = 0.04,
        smoothing_mm: float = 0.12,
        min_wall_mm: float = 0.3,
        max_wall_mm: float = 6.0,
        outer_edge_fraction: float = 0.3,
        median_window: int = 7,
        angular_sigma: int = 3,
    ) -> None:
        super().__init__()
        self.angles = angles
        self.max_radius_mm = max_radius_mm
        self.step_mm = step_mm
        self.min_wall_mm = min_wall_mm
        self.max_wall_mm = max_wall_mm
        self.outer_edge_fraction = outer_edge_fraction
        self.median_window = median_window
        theta = torch.arange(angles, dtype=torch.float32) * (2 * math.pi / angles)
        self.register_buffer("cos_theta", torch.cos(theta))
        self.register_buffer("sin_theta", torch.sin(theta))
        samples = int(max_radius_mm / step_mm) + 1
        self.register_buffer("radii_mm", torch.arange(samples, dtype=torch.float32) * step_mm)
        half = int(3 * smoothing_mm / step_mm) + 1
        offsets = torch.arange(-half, half + 1, dtype=torch.float32) * step_mm
        kernel = torch.exp(-0.5 * (offsets / smoothing_mm) ** 2)
        self.register_buffer("kernel", (kernel / kernel.sum()).view(1, 1, -1))
        bins = torch.arange(-3 * angular_sigma, 3 * angular_sigma + 1, dtype=torch.float32)
        angular = torch.exp(-0.5 * (bins / angular_sigma) ** 2)
        self.register_buffer("angular_kernel", (angular / angular.sum()).view(1, 1, -1))

    def _profiles(self, patches: Tensor, centres: Tensor, pixel_mm: Tensor) -> Tensor:
        """Intensities along every ray: (batch, angles, samples)."""
        batch, height, width = patches.shape
        radii_px = self.radii_mm / pixel_mm
        rows = centres[:, 0].view(-1, 1, 1) + self.sin_theta.view(1, -1, 1) * radii_px.view(
            1, 1, -1
        )
        cols = centres[:, 1].view(-1, 1, 1) + self.cos_theta.view(1, -1, 1) * radii_px.view(
            1, 1, -1
        )
        grid = torch.stack(
            (cols / (width - 1) * 2 - 1, rows / (height - 1) * 2 - 1), dim=-1
        )  # (batch, angles, samples, 2), x then y as grid_sample wants
        sampled = F.grid_sample(
            patches.unsqueeze(1), grid, mode="bilinear", padding_mode="border", align_corners=True
        )
        profiles = sampled.squeeze(1)
        flat = profiles.reshape(batch * self.angles, 1, -1)
        pad = self.kernel.shape[-1] // 2
        smoothed = F.conv1d(F.pad(flat, (pad, pad), mode="replicate"), self.kernel)
        return smoothed.reshape(batch, self.angles, -1)

    def _crossing(
        self, profiles: Tensor, edge: Tensor, low_side: Tensor, high_side: Tensor, rising: bool
    ) -> Tensor:
        """Radius (mm) where a ray crosses the level halfway between the value at sample
        ``low_side`` (lumen or tissue) and the wall's maximum around ``high_side``, nearest to
        derivative index ``edge``.

        The half-level crossing of the linearly interpolated profile is exact to sub-pixel
        precision; the derivative's extremum alone is not, because bilinear interpolation
        makes the derivative flat across each pixel."""
        last = profiles.shape[-1] - 1
        position = torch.arange(last + 1, device=profiles.device).view(1, 1, -1)
        before = torch.gather(profiles, -1, low_side.clamp(0, last).unsqueeze(-1)).squeeze(-1)
        span = int(0.5 / self.step_mm)
        near_high = (position >= high_side.unsqueeze(-1) - span) & (
            position <= high_side.unsqueeze(-1) + span
        )
        # both boundaries border the bright wall: its level is the local maximum
        extreme = torch.where(near_high, profiles, torch.full_like(profiles, -1e9)).amax(-1)
        level = (0.5 * (before + extreme)).unsqueeze(-1)
        current, following = profiles[:, :, :-1], profiles[:, :, 1:]
        if rising:
            crosses = (current < level) & (following >= level)
        else:
            crosses = (current > level) & (following <= level)
        index = position[:, :, :-1]
        distance = torch.where(
            crosses, (index - edge.unsqueeze(-1)).abs(), torch.full_like(index, last + 1)
        )
        j = distance.argmin(dim=-1)
        found = torch.gather(distance, -1, j.unsqueeze(-1)).squeeze(-1) <= last
        value_j = torch.gather(current, -1, j.unsqueeze(-1)).squeeze(-1)
        value_next = torch.gather(following, -1, j.unsqueeze(-1)).squeeze(-1)
        change = value_next - value_j
        fraction = torch.where(
            change.abs() > 1e-6, (level.squeeze(-1) - value_j) / change, torch.zeros_like(change)
        )
        crossing = (j.to(torch.float32) + fraction.clamp(0.0, 1.0)) * self.step_mm
        fallback = (edge.to(torch.float32) + 0.5) * self.step_mm
        return torch.where(found, crossing, fallback)

    def _circular_median(self, values: Tensor) -> Tensor:
        half = self.median_window // 2
        padded = torch.cat((values[:, -half:], values, values[:, :half]), dim=1)
        return padded.unfold(1, self.median_window, 1).median(dim=-1).values

    def _circular_smooth(self, values: Tensor) -> Tensor:
        half = self.angular_kernel.shape[-1] // 2
        padded = torch.cat((values[:, -half:], values, values[:, :half]), dim=1)
        return F.conv1d(padded.unsqueeze(1), self.angular_kernel).squeeze(1)

    def forward(
        self, patches: Tensor, centres: Tensor, pixel_mm: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """patches (B, H, W) float; centres (B, 2) lumen centre (row, col) in patch pixels;
        pixel_mm scalar. Returns lumen mask, wall mask (B, H, W) bool, inner and outer
        radius per angle (B, angles) mm, lumen area, wall area and max thickness (B,) mm."""
        patches = patches.to(torch.float32)
        centres = centres.to(torch.float32)
        pixel_mm = pixel_mm.to(torch.float32).reshape(())
        profiles = self._profiles(patches, centres, pixel_mm)
        derivative = profiles[:, :, 1:] - profiles[:, :, :-1]  # derivative at (i + 0.5) * step
        samples = derivative.shape[-1]
        position = torch.arange(samples, device=patches.device).view(1, 1, -1)
        # lumen boundary: the strongest rising edge, searched out to the maximum lumen size
        search = (position.to(torch.float32) + 0.5) * self.step_mm < (
            self.max_radius_mm - self.max_wall_mm
        )
        rising = torch.where(search, derivative, torch.full_like(derivative, -1e9))
        inner_index = rising.argmax(dim=-1)
        half_mm = int(0.5 / self.step_mm)
        inner = self._crossing(
            profiles, inner_index, inner_index - half_mm, inner_index + half_mm, True
        )
        inner_strength = torch.gather(derivative, -1, inner_index.unsqueeze(-1))
        # outer boundary: the first falling edge after the lumen whose strength is a fair
        # fraction of the lumen edge's, and its local extremum
        offset = position - inner_index.unsqueeze(-1)
        window = (offset.to(torch.float32) * self.step_mm >= self.min_wall_mm) & (
            offset.to(torch.float32) * self.step_mm <= self.max_wall_mm
        )
        strong = window & (derivative < -self.outer_edge_fraction * inner_strength)
        first = torch.where(
            strong, position.expand_as(derivative), torch.full_like(position, samples)
        )
        first_index = first.min(dim=-1).values.clamp(max=samples - 1)
        # follow the falling edge down to its steepest point
        falling_run = (position >= first_index.unsqueeze(-1)) & window
        reach = (position - first_index.unsqueeze(-1)).to(torch.float32) * self.step_mm
        near = falling_run & (reach <= 0.6)
        falling = torch.where(near, derivative, torch.full_like(derivative, 1e9))
        outer_index = falling.argmin(dim=-1)
        # the wall's own level lies between the two edges, the tissue's half a mm outside
        wall_centre = (inner_index + outer_index) // 2
        outer = self._crossing(profiles, outer_index, outer_index + half_mm + 1, wall_centre, False)
        inner = self._circular_smooth(self._circular_median(inner))
        outer = self._circular_smooth(self._circular_median(outer))
        outer = torch.maximum(outer, inner + self.min_wall_mm)
        step = 2 * math.pi / self.angles
        lumen_area = 0.5 * (inner**2).sum(dim=1) * step
        wall_area = 0.5 * (outer**2).sum(dim=1) * step - lumen_area
        # max thickness: the outer point farthest from the lumen contour
        inner_points = torch.stack((inner * self.cos_theta, inner * self.sin_theta), dim=-1)
        outer_points = torch.stack((outer * self.cos_theta, outer * self.sin_theta), dim=-1)
        distances = torch.cdist(outer_points, inner_points)
        thickness = distances.min(dim=-1).values.max(dim=-1).values
        lumen_mask, wall_mask = self._rasterise(patches, centres, pixel_mm, inner, outer)
        return lumen_mask, wall_mask, inner, outer, lumen_area, wall_area, thickness

    def _rasterise(
        self, patches: Tensor, centres: Tensor, pixel_mm: Tensor, inner: Tensor, outer: Tensor
    ) -> tuple[Tensor, Tensor]:
        batch, height, width = patches.shape
        rows = torch.arange(height, device=patches.device, dtype=torch.float32).view(1, -1, 1)
        cols = torch.arange(width, device=patches.device, dtype=torch.float32).view(1, 1, -1)
        dy = (rows - centres[:, 0].view(-1, 1, 1)) * pixel_mm
        dx = (cols - centres[:, 1].view(-1, 1, 1)) * pixel_mm
        radius = torch.sqrt(dx**2 + dy**2)
        angle = torch.remainder(torch.atan2(dy, dx), 2 * math.pi) / (2 * math.pi / self.angles)
        low = angle.floor().to(torch.long) % self.angles
        high = (low + 1) % self.angles
        weight = angle - angle.floor()
        flat_low = low.reshape(batch, -1)
        flat_high = high.reshape(batch, -1)
        flat_weight = weight.reshape(batch, -1)
        inner_at = (
            torch.gather(inner, 1, flat_low) * (1 - flat_weight)
            + torch.gather(inner, 1, flat_high) * flat_weight
        )
        outer_at = (
            torch.gather(outer, 1, flat_low) * (1 - flat_weight)
            + torch.gather(outer, 1, flat_high) * flat_weight
        )
        flat_radius = radius.reshape(batch, -1)
        lumen = (flat_radius <= inner_at).reshape(batch, height, width)
        wall = ((flat_radius > inner_at) & (flat_radius <= outer_at)).reshape(batch, height, width)
        return lumen, wall
