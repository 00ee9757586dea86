"""The input side of the trainer: datasets by name -> train and eval batches of tokens or images.

Importing the dataset modules registers them: python_stdlib, lm1b, c4 (text.py), markov,
digits, cifar10, cifar100, imagenet2012 (vision.py), stdlib_packages, glue/sst2, imdb_reviews
(text_classification.py).
"""

from jaxscale.data import markov as _markov  # Registers 'markov'.
from jaxscale.data import text as _text  # Registers 'python_stdlib', 'lm1b', 'c4'.
# Registers 'stdlib_packages', 'glue/sst2', 'imdb_reviews'.
from jaxscale.data import text_classification as _text_classification
from jaxscale.data import vision as _vision  # Registers 'digits', 'cifar10/100', 'imagenet2012'.
from jaxscale.data.datasets import Datasets, get_datasets
from jaxscale.data.sources import DATASETS

__all__ = ['DATASETS', 'Datasets', 'get_datasets']
