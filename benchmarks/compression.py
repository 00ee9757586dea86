"""The compression trade-off table and plot: `python benchmarks/compression.py [flags]`.

The code is in compression_tradeoff.py beside this file (its docstring lists the flags). This file
defines nothing when imported: `compression` is also the name of a standard-library package
(Python 3.14) that JAX tries to import, and a script's own folder comes first on the import path,
so any script in benchmarks/ that imports JAX imports this file under that name.
"""

if __name__ == '__main__':
  import pathlib
  import runpy

  runpy.run_path(str(pathlib.Path(__file__).with_name('compression_tradeoff.py')),
                 run_name='__main__')
