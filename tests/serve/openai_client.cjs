// Drives `epserve serve` with the official `openai` npm client, unchanged (NODE_PATH = the cached
// node_modules). Prints one JSON object of what it saw; the C++ test asserts on it.
// usage: node openai_client.cjs BASE_URL
const { OpenAI } = require('openai');

async function main() {
  const client = new OpenAI({ baseURL: process.argv[2], apiKey: 'unused', maxRetries: 0, timeout: 120000 });
  const out = {};
  const messages = [{ role: 'user', content: 'Tell me about mixture-of-experts models.' }];

  const models = await client.models.list();
  out.models = models.data.map((m) => m.id);

  const chat = await client.chat.completions.create({ model: 'tiny', messages, max_tokens: 12, temperature: 0, ignore_eos: true });
  out.chat = { content: chat.choices[0].message.content, finish_reason: chat.choices[0].finish_reason, usage: chat.usage };

  const stream = await client.chat.completions.create({
    model: 'tiny', messages, max_tokens: 12, temperature: 0, ignore_eos: true, stream: true,
    stream_options: { include_usage: true },
  });
  let content = '', finish = null, usage = null, chunks = 0;
  for await (const chunk of stream) {
    chunks++;
    if (chunk.usage) usage = chunk.usage;
    if (chunk.choices.length) {
      content += chunk.choices[0].delta.content || '';
      finish = chunk.choices[0].finish_reason || finish;
    }
  }
  out.chat_stream = { content, finish_reason: finish, usage, chunks };

  const comp = await client.completions.create({ model: 'tiny', prompt: 'Once upon a time', max_tokens: 5, seed: 3, ignore_eos: true });
  out.completion = { text: comp.choices[0].text, usage: comp.usage };

  // 64 concurrent streams, each with its own prompt and seed.
  const runs = await Promise.all([...Array(64).keys()].map(async (i) => {
    const s = await client.chat.completions.create({
      model: 'tiny', messages: [{ role: 'user', content: `request ${i}` }], max_tokens: 16, seed: i, ignore_eos: true,
      stream: true, stream_options: { include_usage: true },
    });
    let fin = null, u = null;
    for await (const c of s) {
      if (c.usage) u = c.usage;
      if (c.choices.length && c.choices[0].finish_reason) fin = c.choices[0].finish_reason;
    }
    return { finish_reason: fin, usage: u };
  }));
  out.concurrent = runs;

  try {
    await client.chat.completions.create({ model: 'tiny', messages, n: 2 });
    out.error = { status: 0 };
  } catch (e) {
    out.error = { status: e.status, param: e.param, code: e.code, message: e.message };
  }
  try {
    await client.chat.completions.create({ model: 'no-such-model', messages });
    out.not_found = { status: 0 };
  } catch (e) {
    out.not_found = { status: e.status, code: e.code };
  }
  console.log(JSON.stringify(out));
}

main().catch((e) => { console.error(e); process.exit(1); });
