"""The trainer: the experiment build, the pure compiled steps, the optimizer and the loop.

`jaxscale.train.run(config, workdir)` is what `python -m jaxscale.main` calls.
"""

from jaxscale.train.loop import run

__all__ = ['run']
