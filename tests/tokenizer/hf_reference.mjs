// HuggingFace's own implementations, as the reference the C++ tokenizer tests compare against:
// `tokenizers` (the Rust library behind transformers' fast tokenizers) for ids and decoding, and
// `@huggingface/jinja` (transformers.js' template engine, trim_blocks and lstrip_blocks on as in
// transformers) for chat templates, with the special tokens from tokenizer_config.json.
//
// usage: node hf_reference.mjs REQUEST.json > RESPONSE.json   (NODE_PATH = the cached node_modules)
// request:  {"tokenizer_dir": DIR, "encode": [text], "decode": [[id]], "decode_skip_special": [[id]],
//            "chats": [{"messages": [{role, content}], "add_generation_prompt": bool}],
//            "templates": [{"source": jinja, "context": {...}}]}
// response: {"encode": [[id]], "decode": [text], "decode_skip_special": [text],
//            "chats": [{"text": rendered, "ids": [id]}], "templates": [rendered]}
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';

// ES modules ignore NODE_PATH; resolve the packages through it explicitly.
const require = createRequire(path.join(process.env.NODE_PATH || process.cwd(), 'noop.js'));
const { Tokenizer } = require('tokenizers');
const { Template } = await import(require.resolve('@huggingface/jinja'));

const request = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const dir = request.tokenizer_dir;
const tokenizer = Tokenizer.fromFile(path.join(dir, 'tokenizer.json'));
const response = {};

const idsOf = async (texts) => (await tokenizer.encodeBatch(texts)).map((e) => Array.from(e.getIds()));

if (request.encode) response.encode = await idsOf(request.encode);
if (request.decode) response.decode = await tokenizer.decodeBatch(request.decode, false);
if (request.decode_skip_special) response.decode_skip_special = await tokenizer.decodeBatch(request.decode_skip_special, true);
if (request.chats) {
  const config = JSON.parse(readFileSync(path.join(dir, 'tokenizer_config.json'), 'utf8'));
  const special = {};
  for (const key of ['bos_token', 'eos_token', 'pad_token', 'unk_token']) {
    const v = config[key];
    if (v == null) continue;
    special[key] = typeof v === 'string' ? v : v.content;
  }
  const template = new Template(config.chat_template);
  const texts = request.chats.map((c) =>
    template.render({ messages: c.messages, add_generation_prompt: c.add_generation_prompt, ...special }));
  const ids = await idsOf(texts);
  response.chats = texts.map((text, k) => ({ text, ids: ids[k] }));
}
if (request.templates) response.templates = request.templates.map((t) => new Template(t.source).render(t.context));
process.stdout.write(JSON.stringify(response));
