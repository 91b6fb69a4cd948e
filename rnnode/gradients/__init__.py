"""Gradient methods: strategy objects passed as `gradient=` to `sequence_loss`."""

from ._base import AbstractGradient as AbstractGradient
from ._base import Autodiff as Autodiff
