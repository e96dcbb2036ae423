"""What the next Jacobi window holds: how many guesses, and which.

`FixedBlocks` is the paper's scheme: blocks of n tokens whose window shrinks to the unsettled positions until the
block reaches its fixed point; `MultiBlocks` keeps several such blocks in flight (Jacobi Forcing's decoder).
`AutoWindows` (`jacobi_n="auto"`) chooses before every window whatever is expected to
give the most tokens per unit of forward cost, measured on this model and device: one greedy token, a check of an
n-gram guess, or a Jacobi block. `NgramGuesses` supplies guesses from n-grams (prompt lookup and a lookahead-style
pool). Like decoding.py this module imports only torch: both are copied into the `custom_generate/` folder.
"""

from __future__ import annotations

import time
import weakref
from typing import Callable

import torch


# (input_ids [B, T], attention_mask [B, T] or None, k) -> LongTensor [B, k]
Guesser = Callable[[torch.LongTensor, torch.Tensor | None, int], torch.LongTensor]
JACOBI_INITS = ("random", "pad", "ngram")
# `jacobi_init` may also be a callable: (input_ids [B, T], num_guesses) -> LongTensor [B, num_guesses].
GuessFn = Callable[[torch.LongTensor, int], torch.LongTensor]


def _row_starts(input_ids, attention_mask):
    """Index of each row's first real token (padding is on the left)."""
    if attention_mask is None:
        return torch.zeros(input_ids.shape[0], dtype=torch.long, device=input_ids.device)
    return input_ids.shape[1] - attention_mask.sum(-1).long()


def initial_guesses(jacobi_init, jacobi_seed: int, pad_token_id, batch_size, device, vocab_size: int) -> Guesser:
    """The `Guesser` that opens a block for `jacobi_init` ("random", "pad", "ngram" or a `GuessFn`)."""
    if jacobi_init == "ngram":
        fallback = initial_guesses("random", jacobi_seed, pad_token_id, batch_size, device, vocab_size)
        return NgramGuesses(batch_size, device, fallback)
    if callable(jacobi_init):

        def from_callable(input_ids, attention_mask, k):
            guesses = torch.as_tensor(jacobi_init(input_ids, k)).to(device=device, dtype=torch.long)
            if guesses.shape != (input_ids.shape[0], k) or ((guesses < 0) | (guesses >= vocab_size)).any():
                raise ValueError(
                    f"`jacobi_init` returned guesses of shape {tuple(guesses.shape)} with ids from "
                    f"{guesses.min().item() if guesses.numel() else None} to "
                    f"{guesses.max().item() if guesses.numel() else None}: it must return token ids in "
                    f"[0, {vocab_size}) of shape (batch size, num_guesses) = ({input_ids.shape[0]}, {k})."
                )
            return guesses

        return from_callable
    if jacobi_init == "pad":
        if pad_token_id is None:
            raise ValueError(
                "`jacobi_init='pad'` needs a `pad_token_id` (or `eos_token_id`) in the generation config."
            )
        return lambda input_ids, attention_mask, k: pad_token_id.to(device).expand(input_ids.shape[0], k).clone()
    if jacobi_init != "random":
        raise ValueError(
            f"`jacobi_init` must be one of {JACOBI_INITS} or a callable (input_ids, num_guesses) -> guesses "
            f"(got {jacobi_init!r})."
        )
    # The paper's initialisation: tokens drawn uniformly, with replacement, from the row's own context (its prompt
    # and output so far, never its padding). Seeded so runs (and their statistics) are reproducible.
    generator = torch.Generator(device=device).manual_seed(jacobi_seed)

    def random_from_context(input_ids, attention_mask, k):
        # Padding is on the left, so a row's own tokens are its last `valid` ones.
        width = input_ids.shape[1]
        valid = (
            attention_mask.sum(-1, keepdim=True)
            if attention_mask is not None
            else torch.full_like(input_ids[:, :1], width)
        )
        offsets = (torch.rand(input_ids.shape[0], k, generator=generator, device=device) * valid).long()
        return input_ids.gather(1, width - valid + offsets)

    return random_from_context


class NgramGuesses:
    """Guesses from n-grams, as tensors and in bounded memory.

    First choice: prompt lookup, the tokens that followed the latest earlier occurrence of the row's last
    `max_ngram` … 1 tokens in its prompt and output (longest match wins). Else: a pool of the last `pool_size`
    n-grams the model itself predicted at rejected window positions (each key token with the `span` predictions
    that followed it), as lookahead decoding keeps from Jacobi iterations. Positions neither source fills come
    from `fallback`.
    """

    def __init__(self, batch_size, device, fallback: Guesser, max_ngram=3, pool_size=64, span=16):
        self.fallback, self.max_ngram, self.span = fallback, max_ngram, span
        self.pool_keys = torch.full((batch_size, pool_size), -1, dtype=torch.long, device=device)
        self.pool_values = torch.full((batch_size, pool_size, span), -1, dtype=torch.long, device=device)
        self.pool_next = 0  # the ring buffer's next slot, shared by the batch

    def observe(self, window, pred, keep: int) -> None:
        """Remember the predictions at the window's rejected positions: `window[j]` followed by `pred[j:j+span]`."""
        length, pool_size = window.shape[1], self.pool_keys.shape[1]
        if keep >= length:
            return
        values = torch.nn.functional.pad(pred, (0, self.span - 1), value=-1).unfold(1, self.span, 1)[:, keep:length]
        keys = window[:, keep:length]
        count = min(keys.shape[1], pool_size)
        slots = (self.pool_next + torch.arange(count, device=keys.device)) % pool_size
        self.pool_keys[:, slots] = keys[:, -count:]
        self.pool_values[:, slots] = values[:, -count:]
        self.pool_next = (self.pool_next + count) % pool_size

    def lookup(self, input_ids, attention_mask, k: int, prefer_pool=None):
        """(guesses [B, k] with -1 where there is none, how many leading guesses each row has [B], and where they
        come from [B]: the size of the matched n-gram, 0 for the pool, -1 for nowhere). Rows of `prefer_pool` [B]
        take the pool's guesses over a match of one token."""
        batch, width = input_ids.shape
        device = input_ids.device
        guesses = torch.full((batch, k), -1, dtype=torch.long, device=device)
        found = torch.zeros(batch, dtype=torch.long, device=device)
        source = torch.full((batch,), -1, dtype=torch.long, device=device)
        if k == 0:
            return guesses, found, source
        offsets = torch.arange(k, device=device)
        starts = _row_starts(input_ids, attention_mask)
        for size in range(min(self.max_ngram, width - 1), 0, -1):
            # n-grams that end before the last token, i.e. earlier occurrences of the row's last `size` tokens
            grams = input_ids[:, :-1].unfold(1, size, 1)  # [B, width - size, size]
            positions = torch.arange(grams.shape[1], device=device)
            hit = (grams == input_ids[:, None, -size:]).all(-1) & (positions >= starts[:, None])
            latest = torch.where(hit, positions + 1, 0).max(-1).values - 1  # -1: no occurrence
            follow = latest + size  # first token after the occurrence
            available = (width - follow).clamp(max=k)
            tokens = input_ids.gather(1, (follow[:, None] + offsets).clamp(max=width - 1))
            take = (found == 0) & (latest >= 0)
            guesses = torch.where(take[:, None] & (offsets < available[:, None]), tokens, guesses)
            found = torch.where(take, available, found)
            source = torch.where(take, size, source)
        values, available, hit = self.pool_lookup(input_ids, k)
        weak = (source == 1) & prefer_pool if prefer_pool is not None else False
        take = ((found == 0) | weak) & hit
        guesses = torch.where(take[:, None], values, guesses)
        found = torch.where(take, available, found)
        source = torch.where(take, 0, source)
        return guesses, found, source

    def pool_lookup(self, input_ids, k: int):
        """The pool's guesses for each row: the most recently stored n-gram whose key is the row's last token
        (guesses [B, k], -1 where there is none; how many leading guesses [B]; whether the pool had the key [B])."""
        batch, device = input_ids.shape[0], input_ids.device
        pool_size = self.pool_keys.shape[1]
        hit = self.pool_keys == input_ids[:, -1:]
        age = (self.pool_next - 1 - torch.arange(pool_size, device=device)) % pool_size
        newest = torch.where(hit, pool_size - age, 0).argmax(-1)
        values = self.pool_values[torch.arange(batch, device=device), newest][:, :k]
        values = torch.nn.functional.pad(values, (0, k - values.shape[1]), value=-1)
        return values, (values >= 0).long().cumprod(-1).sum(-1), hit.any(-1)

    def __call__(self, input_ids, attention_mask, k: int) -> torch.LongTensor:
        guesses, _, _ = self.lookup(input_ids, attention_mask, k)
        return self.fill(guesses, input_ids, attention_mask)

    def fill(self, guesses, input_ids, attention_mask):
        """Positions without an n-gram guess get the fallback's."""
        return torch.where(guesses >= 0, guesses, self.fallback(input_ids, attention_mask, guesses.shape[1]))


class FixedBlocks:
    """Blocks of `block_size`; inside a block the window shrinks to its unsettled positions (the paper's Jacobi)."""

    def __init__(self, block_size: int, open_guesses: Guesser):
        self.block_size, self.open_guesses = block_size, open_guesses

    def next_guesses(self, input_ids, attention_mask, window, pred, keep: int):
        if isinstance(self.open_guesses, NgramGuesses):
            self.open_guesses.observe(window, pred, keep)
        if keep < window.shape[1]:  # not at the fixed point yet: the remaining predictions are the next guesses
            return pred[:, keep:-1]
        if self.block_size == 1:
            return input_ids[:, :0]
        return self.open_guesses(input_ids, attention_mask, self.block_size - 1)


class MultiBlocks:
    """Several blocks in flight (Jacobi Forcing's multi-block decoding): once the front block is `open_at` accepted,
    the window also carries the next block — the window's last prediction, then `block_size - 1` fresh guesses —
    until `max_blocks` are in flight. A later block iterates while the blocks before it are still unconverged (what
    noisy-context training prepares a model for), so it starts out closer to its fixed point when it reaches the
    front. Fresh guesses come from `open_guesses` on the context extended by the window's predictions, so an n-gram
    opener (`jacobi_init="ngram"`) recycles the n-grams rejected earlier. Acceptance is unchanged: still lossless."""

    def __init__(self, block_size: int, max_blocks: int, open_guesses: Guesser, open_at: float = 0.85):
        self.block_size, self.max_blocks, self.open_at = block_size, max_blocks, open_at
        self.open_guesses = open_guesses
        self.blocks: list[int] = []  # the block of each guess in the window
        self.opened: dict[int, int] = {}  # block -> guesses it opened with
        self.count = 0

    def _open(self, guesses: int) -> list[int]:
        self.opened[self.count] = guesses
        self.count += 1
        return [self.count - 1] * guesses

    def next_guesses(self, input_ids, attention_mask, window, pred, keep: int):
        if isinstance(self.open_guesses, NgramGuesses):
            self.open_guesses.observe(window, pred, keep)
        self.blocks = self.blocks[: window.shape[1] - 1][keep:]  # the unsettled positions (`max_length` may cut)
        if not self.blocks:  # every block in flight reached its fixed point: open one, as with a single block
            if self.block_size == 1:
                return input_ids[:, :0]
            self.blocks = self._open(self.block_size - 1)
            return self.open_guesses(input_ids, attention_mask, self.block_size - 1)
        guesses = pred[:, keep:-1]
        front = self.blocks[0]
        accepted = 1 - self.blocks.count(front) / self.opened[front]
        if len(set(self.blocks)) >= self.max_blocks or accepted < self.open_at:
            return guesses
        context = torch.cat([input_ids, pred[:, keep:]], dim=1)
        if attention_mask is not None:
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones(pred[:, keep:].shape)], dim=1)
        fresh = self.open_guesses(context, attention_mask, self.block_size - 1)
        self.blocks += self._open(self.block_size)
        return torch.cat([pred[:, keep:], fresh], dim=1)


class AutoWindows:
    """`jacobi_n="auto"`: before each window, the option with the most expected tokens per unit of forward cost.

    Options: one greedy token (rate 1 by definition); checking an n-gram guess (`NgramGuesses`) of the length `l`
    that maximises `E[tokens | l] / cost(l)`, where `E` follows from the acceptance observed so far for guesses of
    the same source (a 3-, 2- or 1-token match in the context, or the pool): the first guess is right with
    probability `p`, each later one with probability `q` given the ones before it were (copies come in runs, so
    q is usually much higher than p); a Jacobi block of size n (powers of two from 4 up to `max_n`),
    valued at the tokens per cost its earlier blocks achieved. A block whose first two iterations gave one token
    each is abandoned (lossless: what was accepted stays). Options that do not look worth it are still tried now and
    then, while such exploration has cost under `explore_fraction` of the total (plus one first try): block sizes
    without a recent value (each failed try doubling the wait before the next), and n-gram guesses whose estimate
    would otherwise never be revised. `costs[l]` is a forward over l new tokens relative to one, measured on the
    model (`measure_costs`).
    """

    def __init__(self, max_n: int, costs, ngram: NgramGuesses, explore_fraction: float = 0.02, decay: float = 0.97):
        self.max_n, self.costs, self.ngram = max_n, costs, ngram
        self.explore_fraction, self.decay = explore_fraction, decay
        sizes = [size for size in (4, 8, 16, 32, 64, 128) if size < max_n] + [max_n]
        self.block_sizes = sizes if max_n > 1 else []
        self.block_rate = {size: None for size in self.block_sizes}
        self.retry_at = {size: 0 for size in self.block_sizes}  # decision count after which to explore it again
        self.retry_wait = {size: 64 for size in self.block_sizes}
        # per n-gram source (pool 0, context match of 1, 2, 3 tokens), (hits, tries) of its first guesses and of the
        # guesses after a right one; priors 1/2 and 3/4
        sources = range(ngram.max_ngram + 1)
        self.first_guess = {source: [1.0, 2.0] for source in sources}
        self.next_guess = {source: [3.0, 4.0] for source in sources}
        self.ngram_source = 0
        self.decisions, self.spent, self.explored = 0, 0.0, 0.0
        self.mode, self.block_size, self.exploring = "greedy", 0, False
        self.block_tokens, self.block_cost, self.block_iterations = 0, 0.0, 0
        self.ngram_in_window = 0

    def next_guesses(self, input_ids, attention_mask, window, pred, keep: int):
        length = window.shape[1]
        self.ngram.observe(window, pred, keep)
        self._observe(length, keep)
        if self.mode == "block":
            if keep < length and not (self.block_iterations == 2 and self.block_tokens == 2):
                return pred[:, keep:-1]
            self._end_block()
        return self._decide(input_ids, attention_mask)

    def _observe(self, length: int, keep: int) -> None:
        cost = self.costs[length]
        self.spent += cost
        if self.exploring:
            self.explored += cost
        if self.ngram_in_window:
            guessed, right = self.ngram_in_window, min(keep - 1, self.ngram_in_window)
            self._count(self.first_guess[self.ngram_source], min(right, 1), 1)
            if right:
                self._count(self.next_guess[self.ngram_source], right - 1, right - 1 + (right < guessed))
            self.ngram_in_window = 0
        if self.mode == "block":
            self.block_tokens += keep
            self.block_cost += cost
            self.block_iterations += 1

    def _count(self, stats, hits, tries) -> None:
        stats[0] = self.decay * stats[0] + hits
        stats[1] = self.decay * stats[1] + tries

    def _end_block(self) -> None:
        size, rate = self.block_size, self.block_tokens / self.block_cost
        old = self.block_rate[size]
        self.block_rate[size] = rate if old is None else (old + rate) / 2
        if self.exploring:
            self.retry_wait[size] = self.retry_wait[size] * 2 if rate < 1 else 64
            self.retry_at[size] = self.decisions + self.retry_wait[size]
        self.mode, self.exploring = "greedy", False

    def _ngram_plan(self, available: int, source: int):
        """Best (rate, window length) for checking an n-gram guess with `available` tokens from `source`."""
        (first_hits, first_tries), (next_hits, next_tries) = self.first_guess[source], self.next_guess[source]
        p, q = first_hits / first_tries, next_hits / next_tries
        best, expected = (0.0, 1), 1.0
        for length in range(2, min(available + 1, self.max_n) + 1):
            expected += p * q ** (length - 2)
            best = max(best, (expected / self.costs[length], length))
        return best

    def _decide(self, input_ids, attention_mask):
        self.decisions += 1
        self.exploring = False
        empty = input_ids[:, :0]
        if self.max_n == 1:
            return empty
        guesses, found, source = self.ngram.lookup(input_ids, attention_mask, self.max_n - 1)
        # the batch shares a window: it is as good as its worst row (one host sync)
        available, source = torch.stack([found.min(), source.min()]).tolist()
        options = [(1.0, "greedy", 1)]
        ngram_length = 1
        if available:
            rate, ngram_length = self._ngram_plan(available, source)
            options.append((rate, "ngram", ngram_length))
        options += [(rate, "block", size) for size, rate in self.block_rate.items() if rate is not None]
        rate, mode, size = max(options, key=lambda option: option[0])
        if mode == "greedy" and self._may_explore():
            block = self._block_to_explore()
            if block is not None:
                mode, size, self.exploring = "block", block, True
            elif available:  # an n-gram check that does not look worth it, to revise its estimate
                mode, size, self.exploring = "ngram", min(available + 1, 4), True
        self.mode = mode
        if mode == "greedy":
            return empty
        self.ngram_source = max(source, 0)
        if mode == "ngram":
            self.ngram_in_window = size - 1
            return guesses[:, : size - 1]
        self.block_size = size
        self.block_tokens, self.block_cost, self.block_iterations = 0, 0.0, 0
        self.ngram_in_window = min(available, size - 1)
        return self.ngram.fill(guesses[:, : size - 1], input_ids, attention_mask)

    def _may_explore(self) -> bool:
        """Whether exploration has cost less than its share so far (the first try is always allowed)."""
        return self.explored == 0 or self.explored <= self.explore_fraction * self.spent

    def _block_to_explore(self):
        """A block size due for a try: untried ones first (largest first), then the one waiting longest."""
        due = [size for size in self.block_sizes if self.decisions >= self.retry_at[size]]
        untried = [size for size in due if self.block_rate[size] is None]
        if untried:
            return max(untried)
        return min(due, key=lambda size: self.retry_at[size]) if due else None


class FullWindows:
    """`jacobi_n="auto"` where every window costs the same (padded to one width, `jacobi_width`): every window holds
    `width - 1` guesses, since an empty slot costs as much as a guess. Per position: the n-gram guess for the context
    (`NgramGuesses`: prompt lookup, then the pool of earlier predictions) where there is one, else the previous
    window's prediction there (after its accepted tokens: a Jacobi iteration, which converges as blocks do), else a
    guess from `jacobi_init`. No fixed blocks: the window slides on by what each forward accepts.

    Where a row's last token alone matches in its context and the pool holds a continuation too, the row takes the
    source whose guesses were accepted more recently (a decaying mean of accepted guesses, per row): one matching
    token is weak evidence, and which source predicts better differs between texts (code repeats the prompt's
    names, prose the model's own phrases). Everything stays on the device: no host sync."""

    def __init__(self, width: int, ngram: NgramGuesses, decay: float = 0.9):
        self.width, self.ngram, self.decay = width, ngram, decay
        batch, device = ngram.pool_keys.shape[0], ngram.pool_keys.device
        # [B, 2]: recent accepted guesses per window from the pool (0) and a 1-token match (1); priors equal
        self.accepted = torch.ones(batch, 2, device=device)
        # [B]: the source of each row's guesses in the window just run (-1: neither of the two), and how many
        self.chosen = torch.full((batch,), -1, dtype=torch.long, device=device)
        self.guessed = torch.zeros(batch, dtype=torch.long, device=device)

    def next_guesses(self, input_ids, attention_mask, window, pred, keep: int):
        self.ngram.observe(window, pred, keep)
        count = self.width - 1
        if count <= 0:
            return input_ids[:, :0]
        self._credit(keep)
        prefer_pool = self.accepted[:, 0] > self.accepted[:, 1]
        guesses, found, source = self.ngram.lookup(input_ids, attention_mask, count, prefer_pool)
        self.chosen, self.guessed = torch.where(source <= 1, source, -1), found
        iterated = pred[:, keep:-1][:, :count]  # the Jacobi iteration's guesses for the same positions
        fresh = self.ngram.fallback(input_ids, attention_mask, count - iterated.shape[1])
        position = torch.arange(count, device=pred.device)
        return torch.where(position < found[:, None], guesses, torch.cat([iterated, fresh], dim=1))

    def _credit(self, keep: int) -> None:
        """Fold the guesses the last window accepted (`keep` - 1, at most as many as came from its source) into
        that source's decaying mean."""
        right = self.guessed.clamp(max=keep - 1).float()[:, None]
        update = (self.chosen[:, None] == torch.arange(2, device=right.device)) & (self.guessed[:, None] > 0)
        self.accepted = torch.where(update, self.decay * self.accepted + (1 - self.decay) * right, self.accepted)


_MEASURED_COSTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def measure_costs(model, key, max_n: int, time_forward: Callable[[int], float], repeats: int = 3) -> list[float]:
    """Cost of a forward over 1 … max_n new tokens relative to one, as a list indexed by length (index 0 unused).

    Timed once per model and `key` (device, dtype, batch size) with `time_forward(length) -> seconds` at powers of
    two (best of `repeats`), interpolated in between and made non-decreasing; later calls reuse it.
    """
    cached = _MEASURED_COSTS.setdefault(model, {})
    if (key, max_n) in cached:
        return cached[(key, max_n)]
    lengths = sorted({1, max_n} | {2**i for i in range(1, max_n.bit_length()) if 2**i < max_n})
    seconds = {length: min(time_forward(length) for _ in range(repeats)) for length in lengths}
    costs = [0.0]
    for length in range(1, max_n + 1):
        below = max(point for point in lengths if point <= length)
        above = min(point for point in lengths if point >= length)
        share = 0 if above == below else (length - below) / (above - below)
        costs.append((seconds[below] * (1 - share) + seconds[above] * share) / seconds[1])
    for length in range(2, max_n + 1):
        costs[length] = max(costs[length], costs[length - 1], 1.0)
    costs[1] = 1.0
    cached[(key, max_n)] = costs
    return costs


def timer(device) -> Callable[[], float]:
    """A clock that waits for the device's queued work first."""
    if torch.device(device).type == "cuda":
        return lambda: (torch.cuda.synchronize(device), time.perf_counter())[1]
    return time.perf_counter
