// A load generator for `epserve serve` over HTTP (Node's fetch, streaming SSE): time to first token,
// time per output token (p50, p99) and output tokens/s at given concurrency levels; or the time to
// first token of one long prompt (mode prefix: run it twice to see a cold cache, then a hit).
// usage: node serve_load.cjs URL load CONCURRENCY[,C2...] REQUESTS_PER_LEVEL MAX_TOKENS PROMPT_WORDS
//        node serve_load.cjs URL prefix PROMPT_TOKENS_APPROX LABEL
const [url, mode, ...rest] = process.argv.slice(2);

async function one(body) {
  const t0 = performance.now();
  const res = await fetch(url + '/v1/completions', {
    method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ ...body, stream: true, stream_options: { include_usage: true } }),
  });
  if (!res.ok) throw new Error(`HTTP ${res.status}: ${await res.text()}`);
  const dec = new TextDecoder();
  let buf = '', first = null, usage = null;
  for await (const chunk of res.body) {
    buf += dec.decode(chunk, { stream: true });
    let at;
    while ((at = buf.indexOf('\n\n')) >= 0) {
      const ev = buf.slice(0, at); buf = buf.slice(at + 2);
      if (!ev.startsWith('data: ') || ev === 'data: [DONE]') continue;
      const j = JSON.parse(ev.slice(6));
      if (j.usage) usage = j.usage;
      else if (first === null) first = performance.now();
    }
  }
  const end = performance.now();
  const n = usage ? usage.completion_tokens : 0;
  return { ttft: (first - t0) / 1000, tpot: n > 1 ? (end - first) / 1000 / (n - 1) : 0, tokens: n, usage, total: (end - t0) / 1000 };
}

const q = (v, p) => { const s = [...v].sort((a, b) => a - b); return s[Math.min(s.length - 1, Math.floor(p * s.length))]; };
const words = (n, salt) => Array.from({ length: n }, (_, i) => `w${(i * 7919 + salt) % 5003}`).join(' ');

async function load() {
  const [levels, perLevel, maxTokens, promptWords] = [rest[0].split(',').map(Number), +rest[1], +rest[2], +rest[3]];
  const out = [];
  let salt = Math.floor(Math.random() * 1e6);
  for (const c of levels) {
    const results = [];
    let next = 0;
    const t0 = performance.now();
    await Promise.all([...Array(c).keys()].map(async () => {
      while (next < Math.max(perLevel, c)) {
        next++;
        results.push(await one({ model: 'bench', prompt: words(promptWords, salt++), max_tokens: maxTokens, ignore_eos: true, temperature: 0 }));
      }
    }));
    const wall = (performance.now() - t0) / 1000;
    const tokens = results.reduce((a, r) => a + r.tokens, 0);
    out.push({ concurrency: c, requests: results.length, prompt_tokens: results[0].usage.prompt_tokens, max_tokens: maxTokens,
      output_tokens_per_s: tokens / wall, ttft_p50_s: q(results.map((r) => r.ttft), 0.5), ttft_p99_s: q(results.map((r) => r.ttft), 0.99),
      tpot_p50_s: q(results.map((r) => r.tpot), 0.5), tpot_p99_s: q(results.map((r) => r.tpot), 0.99), wall_s: wall });
  }
  console.log(JSON.stringify(out));
}

async function prefix() {
  const r = await one({ model: 'bench', prompt: words(+rest[0], 1), max_tokens: 2, ignore_eos: true, temperature: 0 });
  console.log(JSON.stringify({ label: rest[1], ttft_s: r.ttft, prompt_tokens: r.usage.prompt_tokens, cached_tokens: r.usage.prompt_tokens_details.cached_tokens }));
}

(mode === 'load' ? load() : prefix()).catch((e) => { console.error(e); process.exit(1); });
