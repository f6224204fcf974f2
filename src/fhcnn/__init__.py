"""fhcnn: fully hyperbolic convolutional neural networks (Lensink, Peters, Haber).

Public contract: :class:`HaarDWT`, :class:`LearnableWavelet`, :class:`HyperbolicNetwork`.
"""

from .network import HyperbolicNetwork
from .wavelets import HaarDWT, LearnableWavelet

__version__ = "0.1.0"
__all__ = ["HaarDWT", "LearnableWavelet", "HyperbolicNetwork", "__version__"]
