"""Serving a trained model over HTTP: request batching (`batcher`) and the models behind the
endpoints (`backends`); `python -m jaxscale.serve` puts them behind FastAPI."""
