"""
Classic image-filter kernels as 2-D tensors.
"""
from __future__ import annotations
import juanji._core
import typing
__all__: tuple = ('box', 'gaussian', 'laplacian', 'sobel_x', 'sobel_y')
def box(n: typing.Any, dtype: typing.Any = 'float32') -> juanji._core.Tensor:
    """
    n x n box blur, every entry 1/n^2.
    """
def gaussian(n: typing.Any, sigma: typing.SupportsFloat | typing.SupportsIndex, dtype: typing.Any = 'float32') -> juanji._core.Tensor:
    """
    n x n sampled Gaussian centred at ((n-1)/2, (n-1)/2), normalised to sum 1.
    """
def laplacian(dtype: typing.Any = 'float32') -> juanji._core.Tensor:
    """
    [[0, 1, 0], [1, -4, 1], [0, 1, 0]].
    """
def sobel_x(dtype: typing.Any = 'float32') -> juanji._core.Tensor:
    """
    [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]: horizontal gradient.
    """
def sobel_y(dtype: typing.Any = 'float32') -> juanji._core.Tensor:
    """
    Transpose of sobel_x: vertical gradient.
    """
