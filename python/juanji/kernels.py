"""Classic image-filter kernels (box blur, Gaussian, Laplacian, Sobel) as 2-D tensors."""

from ._core.kernels import *  # noqa: F401,F403
from ._core.kernels import __all__  # noqa: F401
