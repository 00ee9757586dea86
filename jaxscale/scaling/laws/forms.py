"""Named laws: which table columns they read and what their parameters are called.

A law L = E + sum_j K_j / X_j^g_j maps to an `lse_law` parameter vector [log K_1.., g_1.., log E].
`LawSpec` converts between that vector and the names a user reads and pins (`--fix E=1.6`).
"""

import dataclasses
import math

import numpy as np


@dataclasses.dataclass(frozen=True)
class LawSpec:
  variables: tuple[str, ...]      # Table columns X_1..X_m, e.g. ('N', 'D').
  coefficients: tuple[str, ...]   # Names of K_1..K_m, e.g. ('A', 'B').
  exponents: tuple[str, ...]      # Names of g_1..g_m, e.g. ('alpha', 'beta').

  @property
  def param_names(self) -> tuple[str, ...]:
    return self.coefficients + self.exponents + ('E',)

  @property
  def num_terms(self) -> int:
    return len(self.variables)

  def to_params(self, theta, fixed=None) -> dict[str, float]:
    """Named parameters; pinned ones are reported exactly as given (not via exp(log(value)))."""
    m = self.num_terms
    values = [_exp(t) for t in theta[:m]] + list(theta[m:2 * m]) + [_exp(theta[2 * m])]
    return {**{name: float(value) for name, value in zip(self.param_names, values)},
            **(fixed or {})}

  def to_theta(self, params: dict[str, float]) -> np.ndarray:
    return np.array([self._to_internal(name, params[name]) for name in self.param_names])

  def pinned_theta(self, fixed: dict[str, float]) -> np.ndarray:
    """theta-shaped array: the internal value of each pinned parameter, NaN where free."""
    for name in fixed:
      if name not in self.param_names:
        raise ValueError(
            f'Cannot fix {name!r}; this law has parameters {", ".join(self.param_names)}.')
    return np.array([self._to_internal(name, fixed[name]) if name in fixed else np.nan
                     for name in self.param_names])

  def _to_internal(self, name: str, value: float) -> float:
    if name in self.exponents:
      return float(value)
    if value < 0 or (value == 0 and name != 'E'):
      raise ValueError(f'{name} must be positive (E may be 0 for no offset); got {value}.')
    return math.log(value) if value > 0 else -math.inf  # E = 0: the law has no offset.


def _exp(value) -> float:
  """exp that says inf where math.exp raises OverflowError (a diverged refit, judged later)."""
  try:
    return math.exp(value)
  except OverflowError:
    return math.inf


CHINCHILLA = LawSpec(variables=('N', 'D'), coefficients=('A', 'B'), exponents=('alpha', 'beta'))


def power_law(variable: str) -> LawSpec:
  """L(X) = E + k / X^gamma, Kaplan et al. 2020's form plus an offset (pin E=0 to drop it)."""
  return LawSpec(variables=(variable,), coefficients=('k',), exponents=('gamma',))


def parse_fixed(assignments: list[str]) -> dict[str, float]:
  """['E=1.6', 'beta=0.3'] -> {'E': 1.6, 'beta': 0.3}."""
  fixed = {}
  for assignment in assignments or []:
    name, sep, value = assignment.partition('=')
    try:
      fixed[name.strip()] = float(value)
    except ValueError:
      sep = ''
    if not sep:
      raise ValueError(f'--fix expects NAME=VALUE (e.g. E=1.6); got {assignment!r}.')
  return fixed
