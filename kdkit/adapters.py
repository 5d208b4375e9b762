"""Trainable helpers that align a student feature with a teacher feature, built from probed shapes."""

from __future__ import annotations

from torch import Tensor, nn


class ConvRegressor(nn.Module):
    """Maps a student feature ``[B, Cs, Hs, Ws]`` to the teacher's ``[B, Ct, Ht, Wt]``.

    FitNets (Romero et al. 2015, section 2.2) uses a convolutional regressor whose kernel size makes the
    spatial sizes agree: ``k = Hs - Ht + 1`` when the student map is larger. When the sizes already agree
    a 1x1 convolution suffices; when the student map is smaller it is first upsampled (bilinear).
    A batch norm follows the convolution, as in the common benchmark implementations.
    """

    def __init__(self, s_shape: tuple[int, ...], t_shape: tuple[int, ...]):
        super().__init__()
        (cs, hs, ws), (ct, ht, wt) = s_shape, t_shape
        self.upsample = None
        if hs < ht or ws < wt:
            self.upsample = nn.Upsample(size=(ht, wt), mode="bilinear", align_corners=False)
            hs, ws = ht, wt
        self.conv = nn.Conv2d(cs, ct, kernel_size=(hs - ht + 1, ws - wt + 1), bias=False)
        self.bn = nn.BatchNorm2d(ct)

    def forward(self, x: Tensor) -> Tensor:
        if self.upsample is not None:
            x = self.upsample(x)
        return self.bn(self.conv(x))


class LinearRegressor(nn.Module):
    """Maps a student vector ``[B, Ds]`` to the teacher's ``[B, Dt]`` (flattening any extra dims)."""

    def __init__(self, s_dim: int, t_dim: int):
        super().__init__()
        self.fc = nn.Linear(s_dim, t_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x.flatten(1))


class TokenRegressor(nn.Module):
    """Maps a student sequence ``[B, N, Ds]`` to the teacher's ``[B, N, Dt]``: one linear map applied to
    every position (hidden-state hints between transformers of different widths)."""

    def __init__(self, s_dim: int, t_dim: int):
        super().__init__()
        self.fc = nn.Linear(s_dim, t_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x)


def build_regressor(s_shape: tuple[int, ...], t_shape: tuple[int, ...]) -> nn.Module:
    """A regressor from student to teacher feature shape (shapes exclude the batch dimension);
    ``nn.Identity`` when they already match."""
    if tuple(s_shape) == tuple(t_shape):
        return nn.Identity()
    if len(s_shape) == 3 and len(t_shape) == 3:
        return ConvRegressor(s_shape, t_shape)
    if len(s_shape) == 2 and len(t_shape) == 2 and s_shape[0] == t_shape[0]:
        return TokenRegressor(s_shape[1], t_shape[1])
    s_dim, t_dim = _numel(s_shape), _numel(t_shape)
    return LinearRegressor(s_dim, t_dim)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
