"""transformers' side of the Hugging Face conversion tests, run as a subprocess:
`python tests/hf_reference.py JOBS.json RESULTS.json`.

In its own process because PyTorch's compiler stack (which transformers' Llama imports) and
TensorFlow (which jaxscale's data and checkpoints import) crash when loaded in that order into
one process. Each job is a dict with 'op':
  create:   a randomly initialised LlamaForCausalLM(LlamaConfig(**config)) saved to 'out'
            (`save_pretrained`, shards of at most 'max_shard_size' when given);
  logits:   the model in 'model' on 'tokens' [B, L] -> fp32 logits [B, L, V];
  generate: greedy `generate` of 'new' tokens after 'prompts' [B, P] -> new tokens [B, new].
  tokenize: `AutoTokenizer.from_pretrained('tokenizer').encode` of each of 'texts' -> ids;
  generate_text: the directory 'model's own tokenizer and generation config: greedy `generate`
            of at most 'new' tokens after the text 'prompt' -> the new tokens' text.
"""

import json
import sys

import torch
import transformers


def create(job):
  torch.manual_seed(job.get('seed', 0))
  model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**job['config'])).eval()
  with torch.no_grad():  # Weights well away from zero and norm gains away from one.
    for name, param in model.named_parameters():
      if name.endswith('norm.weight'):
        param.copy_(1.0 + 0.2 * torch.randn_like(param))
      else:
        param.normal_(0.0, 0.2)
  kwargs = {'max_shard_size': job['max_shard_size']} if job.get('max_shard_size') else {}
  model.save_pretrained(job['out'], **kwargs)
  return sorted(p.name for p in __import__('pathlib').Path(job['out']).iterdir())


def _load(path):
  return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def logits(job):
  with torch.no_grad():
    return _load(job['model'])(torch.tensor(job['tokens'])).logits.float().tolist()


def generate(job):
  model = _load(job['model'])
  model.generation_config.eos_token_id = None  # Exactly 'new' tokens, as the jaxscale side.
  prompts = torch.tensor(job['prompts'])
  with torch.no_grad():
    out = model.generate(prompts, attention_mask=torch.ones_like(prompts), do_sample=False,
                         max_new_tokens=job['new'], pad_token_id=0)
  return out[:, prompts.shape[1]:].tolist()


def tokenize(job):
  tokenizer = transformers.AutoTokenizer.from_pretrained(job['tokenizer'])
  return [tokenizer.encode(text) for text in job['texts']]


def generate_text(job):
  tokenizer = transformers.AutoTokenizer.from_pretrained(job['model'])
  model = _load(job['model'])
  prompt = tokenizer(job['prompt'], return_tensors='pt')
  with torch.no_grad():
    out = model.generate(**prompt, do_sample=False, max_new_tokens=job['new'])
  return tokenizer.decode(out[0, prompt['input_ids'].shape[1]:], skip_special_tokens=True)


def main(jobs_path, results_path):
  torch.set_num_threads(1)
  ops = {'create': create, 'logits': logits, 'generate': generate, 'tokenize': tokenize,
         'generate_text': generate_text}
  with open(jobs_path) as f:
    jobs = json.load(f)
  results = [ops[job['op']](job) for job in jobs]
  with open(results_path, 'w') as f:
    json.dump(results, f)


if __name__ == '__main__':
  main(*sys.argv[1:])
