"""Text similarity metrics for the ``text_similarity`` grader, each in [0, 1], standard library only.

- ``fuzzy_match``: ``difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()``, a normalised
  matching-characters ratio (close to rapidfuzz's ``fuzz.ratio / 100``).
- ``bleu``: sentence BLEU-4 (uniform weights, brevity penalty) with exponential smoothing of zero
  n-gram counts and effective order (sacreBLEU's sentence-level defaults), on case-sensitive
  word/punctuation tokens.
- ``gleu``: sentence Google-BLEU (min of n-gram precision and recall, n = 1..4), as nltk computes it.
- ``meteor``: METEOR with exact matching only (no stemming or WordNet synonyms): F-mean with
  alpha 0.9 and the fragmentation penalty (gamma 0.5, beta 3), on lowercased tokens.
- ``rouge_1`` .. ``rouge_5``: n-gram overlap F1; ``rouge_l``: longest-common-subsequence F1; on
  lowercased alphanumeric tokens, as the ``rouge_score`` package tokenises.

Two empty texts are identical (1.0); one empty text against a non-empty one scores 0.
"""

from __future__ import annotations

import difflib
import functools
import math
import re
from collections import Counter
from collections.abc import Callable, Sequence

_BLEU_TOKEN = re.compile(r"\w+|[^\w\s]", re.UNICODE)
_ROUGE_TOKEN = re.compile(r"[a-z0-9]+")
# Beyond this many tokens ROUGE-L's quadratic LCS is cut to keep one grading under ~0.1 s.
MAX_LCS_TOKENS = 2000


def _bleu_tokens(text: str) -> list[str]:
    return _BLEU_TOKEN.findall(text)


def _rouge_tokens(text: str) -> list[str]:
    return _ROUGE_TOKEN.findall(text.lower())


def _ngrams(tokens: Sequence[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def _both_empty(a: Sequence[str] | str, b: Sequence[str] | str) -> float | None:
    if not a and not b:
        return 1.0
    if not a or not b:
        return 0.0
    return None


def fuzzy_match(candidate: str, reference: str) -> float:
    early = _both_empty(candidate, reference)
    if early is not None:
        return early
    return difflib.SequenceMatcher(None, candidate, reference, autojunk=False).ratio()


def bleu(candidate: str, reference: str, max_n: int = 4) -> float:
    hyp, ref = _bleu_tokens(candidate), _bleu_tokens(reference)
    early = _both_empty(hyp, ref)
    if early is not None:
        return early
    log_precision = 0.0
    smooth = 1.0
    orders = 0
    for n in range(1, max_n + 1):
        hyp_ngrams = _ngrams(hyp, n)
        total = sum(hyp_ngrams.values())
        if total == 0:
            # "Effective order", as sentence-level sacreBLEU: orders longer than the hypothesis don't count.
            continue
        orders += 1
        matches = sum((hyp_ngrams & _ngrams(ref, n)).values())
        if n == 1 and matches == 0:
            return 0.0  # nothing in common: no smoothing can make that a partial match
        if matches == 0:
            smooth *= 2
            log_precision += math.log(1.0 / (smooth * total))
        else:
            log_precision += math.log(matches / total)
    brevity = 1.0 if len(hyp) > len(ref) else math.exp(1 - len(ref) / len(hyp))
    return min(1.0, brevity * math.exp(log_precision / orders))


def gleu(candidate: str, reference: str, max_n: int = 4) -> float:
    hyp, ref = _bleu_tokens(candidate), _bleu_tokens(reference)
    early = _both_empty(hyp, ref)
    if early is not None:
        return early
    matches = hyp_total = ref_total = 0
    for n in range(1, max_n + 1):
        hyp_ngrams, ref_ngrams = _ngrams(hyp, n), _ngrams(ref, n)
        matches += sum((hyp_ngrams & ref_ngrams).values())
        hyp_total += sum(hyp_ngrams.values())
        ref_total += sum(ref_ngrams.values())
    if hyp_total == 0 or ref_total == 0:
        return 0.0
    return min(matches / hyp_total, matches / ref_total)


def meteor(
    candidate: str, reference: str, alpha: float = 0.9, beta: float = 3.0, gamma: float = 0.5
) -> float:
    hyp, ref = _rouge_tokens(candidate), _rouge_tokens(reference)
    early = _both_empty(hyp, ref)
    if early is not None:
        return early
    # Align each hypothesis token to the first unused identical reference token, left to right.
    used = [False] * len(ref)
    alignment: list[tuple[int, int]] = []
    for i, token in enumerate(hyp):
        for j, ref_token in enumerate(ref):
            if not used[j] and ref_token == token:
                used[j] = True
                alignment.append((i, j))
                break
    matches = len(alignment)
    if matches == 0:
        return 0.0
    precision, recall = matches / len(hyp), matches / len(ref)
    fmean = precision * recall / (alpha * precision + (1 - alpha) * recall)
    chunks = 1
    for (i0, j0), (i1, j1) in zip(alignment, alignment[1:], strict=False):
        if not (i1 == i0 + 1 and j1 == j0 + 1):
            chunks += 1
    penalty = gamma * math.pow(chunks / matches, beta)
    return fmean * (1 - penalty)


def _f1(overlap: int, hyp_total: int, ref_total: int) -> float:
    if overlap == 0 or hyp_total == 0 or ref_total == 0:
        return 0.0
    precision, recall = overlap / hyp_total, overlap / ref_total
    return 2 * precision * recall / (precision + recall)


def rouge_n(candidate: str, reference: str, n: int) -> float:
    hyp, ref = _rouge_tokens(candidate), _rouge_tokens(reference)
    early = _both_empty(hyp, ref)
    if early is not None:
        return early
    hyp_ngrams, ref_ngrams = _ngrams(hyp, n), _ngrams(ref, n)
    overlap = sum((hyp_ngrams & ref_ngrams).values())
    return _f1(overlap, sum(hyp_ngrams.values()), sum(ref_ngrams.values()))


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    if len(a) < len(b):
        a, b = b, a
    previous = [0] * (len(b) + 1)
    for token in a:
        current = [0]
        for j, other in enumerate(b):
            current.append(previous[j] + 1 if token == other else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(candidate: str, reference: str) -> float:
    hyp, ref = _rouge_tokens(candidate)[:MAX_LCS_TOKENS], _rouge_tokens(reference)[:MAX_LCS_TOKENS]
    early = _both_empty(hyp, ref)
    if early is not None:
        return early
    return _f1(_lcs_length(hyp, ref), len(hyp), len(ref))


METRICS: dict[str, Callable[[str, str], float]] = {
    "fuzzy_match": fuzzy_match,
    "bleu": bleu,
    "gleu": gleu,
    "meteor": meteor,
    "rouge_l": rouge_l,
    **{f"rouge_{n}": functools.partial(rouge_n, n=n) for n in range(1, 6)},
}
