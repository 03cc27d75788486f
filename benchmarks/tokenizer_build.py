"""Building the offline caption tokenizer (``build_caption_tokenizer``): the incremental BPE
merge loop against the textbook one it replaced, on the same words, and a million-word corpus.

    python -m benchmarks.tokenizer_build [--json OUT] [--smoke]

The textbook loop recounts every pair of every word after each merge: its time grows with
(merges x distinct words), about quadratically in the vocabulary (issue 27: a 10,000-word
caption hung the build). The package's loop updates the counts of the words a merge touches
and takes the best pair from a heap. Both must give the same merges, in the same order (checked
before timing); the package's also truncates each caption to the model's length first.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections import Counter

from factorcl_hf.offline import _caption_words, _merge_pair, _train_word_merges, build_caption_tokenizer

END_OF_WORD = "</w>"


def reference_word_merges(counts: Counter) -> list[tuple[str, str]]:
    """The textbook BPE loop (the package's until issue 27): recount every pair, merge the most
    frequent (ties: the smallest pair), until every word is one symbol."""
    segments = {word: (*word[:-1], word[-1] + END_OF_WORD) for word in counts}
    merges: list[tuple[str, str]] = []
    while True:
        pairs: Counter = Counter()
        for word, symbols in segments.items():
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += counts[word]
        if not pairs:
            return merges
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        segments = {word: _merge_pair(symbols, best) for word, symbols in segments.items()}


def synthetic_words(count: int, seed: int = 0) -> list[str]:
    """``count`` distinct lower-case words of 3 to 10 letters (few shared prefixes: the worst
    case for the merges, more of them than natural words need)."""
    rng, found = random.Random(seed), {}
    while len(found) < count:
        found.setdefault("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 10))))
    return list(found)


def zipf_corpus(num_words: int, vocabulary: int, caption_words: int = 20, seed: int = 0) -> list[str]:
    """Captions of ``caption_words`` words drawn from a Zipf(1) law over ``vocabulary`` words."""
    rng, words = random.Random(seed), synthetic_words(vocabulary, seed)
    weights = [1 / rank for rank in range(1, vocabulary + 1)]
    drawn = rng.choices(words, weights=weights, k=num_words)
    return [" ".join(drawn[i:i + caption_words]) for i in range(0, num_words, caption_words)]


def run(smoke: bool = False) -> dict:
    rows = []
    for distinct in ((50, 100) if smoke else (250, 500, 1000, 2000)):
        counts = Counter(synthetic_words(distinct, seed=distinct))
        ours = _train_word_merges(counts)
        if ours != reference_word_merges(counts):
            raise RuntimeError(f"the merges differ from the textbook loop's on {distinct} words")
        times = {}
        for name, merge in (("textbook", reference_word_merges), ("incremental", _train_word_merges)):
            start = time.perf_counter()
            merge(counts)
            times[name] = time.perf_counter() - start
        rows.append({"distinct_words": distinct, "merges": len(ours), **times,
                     "speedup": times["textbook"] / times["incremental"]})
    corpus_words, vocabulary = (20_000, 2_000) if smoke else (1_000_000, 30_000)
    captions = zipf_corpus(corpus_words, vocabulary)
    start = time.perf_counter()
    counted = _caption_words(captions, max_words=30)
    counting = time.perf_counter() - start
    start = time.perf_counter()
    tokenizer = build_caption_tokenizer(captions)
    corpus = {"words": corpus_words, "captions": len(captions), "distinct_words_seen": len(counted),
              "vocabulary": len(tokenizer), "build_seconds": time.perf_counter() - start,
              "counting_seconds": counting}
    return {"merge_loops": rows, "corpus": corpus}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (a pipeline check)")
    args = parser.parse_args(argv)
    results = run(args.smoke)
    print("| distinct words | merges | textbook (s) | incremental (s) | speed-up |\n|---|---|---|---|---|")
    for row in results["merge_loops"]:
        print(f"| {row['distinct_words']} | {row['merges']} | {row['textbook']:.2f} | {row['incremental']:.3f} | "
              f"{row['speedup']:.0f}x |")
    corpus = results["corpus"]
    print(f"\n{corpus['words']:,} words in {corpus['captions']:,} captions ({corpus['distinct_words_seen']:,} distinct): "
          f"tokenizer of {corpus['vocabulary']:,} tokens built in {corpus['build_seconds']:.1f} s")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)
    return results


if __name__ == "__main__":
    main()
