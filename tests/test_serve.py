"""The HTTP server on localhost, through a real client: concurrent requests are batched and
answered with what direct generation gives, bad requests get a 400 naming the field, a full queue
refuses at once, and the server stays up throughout."""

import asyncio
import threading

import httpx
import jax
import numpy as np
import pytest

from jaxscale.inference import backends, sampling, server
from jaxscale.inference.batcher import Batcher, QueueFull
from tests import saved_runs

LIMITS = dict(max_prompt_tokens=24, max_new_tokens=16)


def _serving(backend, **kwargs):
  return server.running_server(server.build_app(backend, **kwargs))


@pytest.fixture(scope='module')
def lm_workdir(tmp_path_factory):
  config = saved_runs.family_config('transformer', **{'dataset.seq_len': 16})
  config.model.vocab_size = 256  # Byte tokens: prompts and answers are text.
  return saved_runs.save_run(tmp_path_factory.mktemp('lm'), config)


@pytest.fixture(scope='module')
def lm_server(lm_workdir):
  with _serving(backends.from_workdir(lm_workdir, **LIMITS), max_batch=4) as url:
    yield url


def test_concurrent_requests_are_batched_and_equal_direct_generation(lm_server, lm_workdir):
  # One length but for the last greedy request, so direct generation compiles little.
  requests = [{'prompt': f'def f{i}(x):' + ' ' * i, 'max_new_tokens': 8 - 3 * (i == 5)}
              for i in range(6)]
  requests.append({'prompt': 'import os', 'max_new_tokens': 8, 'temperature': 1.0, 'top_k': 10,
                   'top_p': 0.9, 'seed': 7})

  async def post_all():
    async with httpx.AsyncClient(base_url=lm_server, timeout=120) as client:
      return await asyncio.gather(*(client.post('/generate', json=r) for r in requests))

  responses = asyncio.run(post_all())
  assert [r.status_code for r in responses] == [200] * len(requests)
  model, _ = sampling.restore_model(lm_workdir)
  for request, response in zip(requests, responses):
    seed = request.get('seed', 0)
    direct = sampling.generate(
        model, sampling.encode_bytes(request['prompt']), request['max_new_tokens'],
        temperature=request.get('temperature', 0.0), top_k=request.get('top_k'),
        top_p=request.get('top_p'), rng=jax.random.key(seed), stop_tokens=(0,))
    expected = sampling.trim_at_stop(direct, (0,))
    assert response.json()['tokens'] == expected.tolist(), request
    assert response.json()['text'] == sampling.decode_bytes(expected)
  health = httpx.get(f'{lm_server}/health').json()
  assert health['status'] == 'ok' and health['kind'] == 'lm'
  assert health['requests_served'] >= len(requests) > health['batches_run']


@pytest.mark.parametrize('body, field, message', [
    ({'prompt': 'x', 'temperature': -1}, 'temperature', 'greater than or equal to 0'),
    ({'max_new_tokens': 3}, 'prompt', 'required'),
    ({'prompt': 'x', 'top_p': 1.5}, 'top_p', 'less than or equal to 1'),
    ({'prompt': 'x', 'max_new_tokens': 'many'}, 'max_new_tokens', 'integer'),
    ({'prompt': 'x', 'max_new_tokens': 17}, 'max_new_tokens', 'at most 16'),
    ({'prompt': 'y' * 25}, 'prompt', 'at most 24'),
    ({'prompt': [1, 300]}, 'prompt', '0..255'),
    ({'prompt': ''}, 'prompt', 'empty'),
    ({'prompt': 'x', 'colour': 'red'}, 'colour', 'Extra inputs'),
])
def test_bad_requests_get_a_400_naming_the_field(lm_server, body, field, message):
  response = httpx.post(f'{lm_server}/generate', json=body, timeout=60)
  assert response.status_code == 400
  assert response.json()['field'] == field and message in response.json()['error']


def test_malformed_json_and_the_wrong_endpoint_are_refused_and_the_server_stays_up(lm_server):
  response = httpx.post(f'{lm_server}/generate', content=b'{"prompt": "x",',
                        headers={'content-type': 'application/json'})
  assert response.status_code == 400 and 'not valid JSON' in response.json()['error']
  response = httpx.post(f'{lm_server}/classify', json={'inputs': 'x'})
  assert response.status_code == 400 and '/generate' in response.json()['error']
  assert httpx.get(f'{lm_server}/health').status_code == 200
  ok = httpx.post(f'{lm_server}/generate', json={'prompt': 'def f0(x):', 'max_new_tokens': 8},
                  timeout=60)
  assert ok.status_code == 200 and len(ok.json()['tokens']) <= 8


def test_a_classifier_answers_its_top_classes_with_their_probabilities(tmp_path):
  workdir = saved_runs.save_run(tmp_path, saved_runs.family_config('mlp'), perturb=0.5)
  backend = backends.from_workdir(workdir, **LIMITS)
  image = np.random.default_rng(0).normal(size=(8, 8, 1)).astype(np.float32)
  probs = np.asarray(jax.nn.softmax(backend.forward(image[None])[0]))
  with _serving(backend) as url:
    response = httpx.post(f'{url}/classify', json={'inputs': image.tolist(), 'top_k': 2},
                          timeout=60)
    bad = httpx.post(f'{url}/classify', json={'inputs': [[1.0, 2.0]]})
  assert response.status_code == 200
  classes = response.json()['classes']
  assert [c['class'] for c in classes] == [str(k) for k in np.argsort(-probs)[:2]]
  np.testing.assert_allclose([c['probability'] for c in classes], np.sort(probs)[::-1][:2],
                             rtol=1e-5)
  assert bad.status_code == 400 and bad.json()['field'] == 'inputs'


def test_a_full_queue_refuses_at_once_and_the_worker_lives_on():
  release = threading.Event()

  def run_batch(items):
    release.wait(timeout=30)
    if 'boom' in items:
      raise RuntimeError('boom')
    return [item * 2 for item in items]

  async def scenario():
    batcher = Batcher(run_batch, max_batch=1, max_queue=1, max_wait_s=0)
    worker = asyncio.create_task(batcher.run())
    await asyncio.sleep(0.01)
    running = asyncio.create_task(batcher.submit(1))  # Taken by the worker, blocked.
    await asyncio.sleep(0.05)
    waiting = asyncio.create_task(batcher.submit(2))  # Fills the queue.
    await asyncio.sleep(0.01)
    with pytest.raises(QueueFull):
      await batcher.submit(3)
    release.set()
    results = await asyncio.gather(running, waiting)
    with pytest.raises(RuntimeError, match='boom'):
      await batcher.submit('boom')
    after = await batcher.submit(5)
    worker.cancel()
    return results, after

  results, after = asyncio.run(scenario())
  assert results == [2, 4] and after == 10
