"""The documentation's examples run as written: each page's ```python blocks, in order, in a
fresh interpreter (so the models and datasets they register stay out of this process)."""

import doctest
import os
import re
import subprocess
import sys

import pytest

from jaxscale.inference import sampling

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python_blocks(page: str) -> list[str]:
  with open(os.path.join(REPO, 'docs', page)) as f:
    return re.findall(r'^```python\n(.*?)^```', f.read(), flags=re.MULTILINE | re.DOTALL)


@pytest.mark.slow
@pytest.mark.parametrize('page, expected_output', [
    ('adding_a_model.md', 'config.model.mlp_width'),
    ('adding_a_dataset.md', 'bits/byte'),
    ('architecture.md', 'step 20: train loss'),
])
def test_code_blocks_of_the_page_run(page, expected_output, tmp_path):
  blocks = _python_blocks(page)
  assert blocks, page
  env = {**os.environ, 'PYTHONPATH': os.pathsep.join([REPO, os.environ.get('PYTHONPATH', '')])}
  script = tmp_path / page.replace('.md', '.py')
  script.write_text('\n\n'.join(blocks))
  result = subprocess.run([sys.executable, str(script)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-4000:]
  assert expected_output in result.stdout, result.stdout


def test_sampling_docstring_examples():
  failures, attempted = doctest.testmod(sampling, optionflags=doctest.NORMALIZE_WHITESPACE)
  assert attempted > 0 and failures == 0
