"""Step proposals: the drafter side of step speculation and PRM search.

A step is the text a model writes up to the step delimiter (``;``) or the end of its sequence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol, runtime_checkable

import numpy as np

from models.base import CausalLM, Tokenizer
from models.generate import Decoded, Stop, StopRule, argmax, decode, decode_batch, sampler
from models.sampling import SamplingParams
from models.task import STEP_DELIMITER


@dataclass(frozen=True)
class StepDraft:
    """One proposed next step."""

    text: str  # the step, stripped, without its delimiter
    tokens: int  # tokens generated for it, the delimiter or eos included
    complete: bool  # False when the token cap cut it mid-step (then it must not be used)
    ended: bool  # the model closed its sequence (eos or max_len) right after this step


@runtime_checkable
class StepProposer(Protocol):
    """Proposes candidate next steps for partial solutions of one question."""

    def propose(
        self,
        question: str,
        prefixes: Sequence[Sequence[str]],
        n: int,
        temperature: float,
        seed: int,
        max_tokens: int | None = None,
    ) -> list[list[StepDraft]]:
        """``n`` candidates per prefix (one list per prefix, in order).

        ``max_tokens`` caps the tokens generated over the whole call, so a search never drafts
        past its budget; candidates the cap cuts short come back with ``complete=False``.
        """
        ...


@dataclass(frozen=True)
class LMProposerConfig:
    """How an LM writes steps."""

    max_step_tokens: int = 12  # a step longer than this is cut (the task's steps have 5 words)
    top_p: float = 1.0  # nucleus sampling mass
    delimiter: str = STEP_DELIMITER  # ends a step: one token of the model's tokenizer
    step_joiner: str = ""  # separates steps in the prompt; empty: " {delimiter} ", or a
    # whitespace delimiter (a newline) on its own

    @property
    def joiner(self) -> str:
        return self.step_joiner or joiner_for(self.delimiter)


def joiner_for(delimiter: str) -> str:
    """What separates steps in a text: " {delimiter} ", or a whitespace delimiter on its own."""
    return f" {delimiter} " if delimiter.strip() else delimiter


class LMStepProposer:
    """Steps sampled from any CausalLM + Tokenizer; all candidates advance in one batched pass."""

    def __init__(
        self, lm: CausalLM, tokenizer: Tokenizer, config: LMProposerConfig | None = None
    ) -> None:
        self.lm, self.tok = lm, tokenizer
        self.config = config or LMProposerConfig()
        d = self.config.delimiter
        try:
            delim = tokenizer.encode(d)
        except ValueError:
            delim = []
        if len(delim) != 1:
            raise ValueError(f"the step delimiter {d!r} must be a single token of the tokenizer")
        self.delimiter_id = delim[0]

    def with_delimiter(self, delimiter: str) -> LMStepProposer:
        """This proposer with steps ending at ``delimiter`` (empty: unchanged); ValueError unless
        it is one token of the tokenizer."""
        if not delimiter or delimiter == self.config.delimiter:
            return self
        return LMStepProposer(self.lm, self.tok, replace(self.config, delimiter=delimiter))

    def prompt(self, question: str, steps: Sequence[str]) -> list[int]:
        """Token ids of the question and the steps so far, each closed by its delimiter."""
        j = self.config.joiner
        text = question + (" " + j.join(steps) + j.rstrip() if steps else "")
        return [self.tok.bos_id, *self.tok.encode(text)]

    def propose(
        self,
        question: str,
        prefixes: Sequence[Sequence[str]],
        n: int,
        temperature: float,
        seed: int,
        max_tokens: int | None = None,
    ) -> list[list[StepDraft]]:
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        rng = np.random.default_rng(seed)
        params = SamplingParams(temperature=temperature, top_p=self.config.top_p, seed=seed)
        prompts = [self.prompt(question, s) for s in prefixes for _ in range(n)]
        cap = max_tokens if max_tokens is not None else len(prompts) * self.config.max_step_tokens
        drafts = self._sample(prompts, params, rng, cap)
        return [drafts[i * n : (i + 1) * n] for i in range(len(prefixes))]

    def _sample(
        self,
        prompts: list[list[int]],
        params: SamplingParams,
        rng: np.random.Generator,
        cap: int,
    ) -> list[StepDraft]:
        """Advance every prompt token by token in one batch until its step closes or cap is hit."""
        rule = StopRule(self.config.max_step_tokens, self.lm.max_len, self._stops)
        sessions = [self.lm.session() for _ in prompts]
        rows = decode_batch(
            self.lm.extend_batch, sessions, prompts, sampler(params, rng), rule, cap
        )
        return [self._draft(d, len(p)) for d, p in zip(rows, prompts, strict=True)]

    @property
    def _stops(self) -> frozenset[int]:
        return frozenset((self.delimiter_id, self.tok.eos_id))

    def _draft(self, d: Decoded, prompt_len: int, prefix: Sequence[int] = ()) -> StepDraft:
        """A step from a decoded row: complete unless the batch's budget cut it; ended when the
        model closed its sequence (eos, or the length limit) with it."""
        tokens = [*prefix, *d.tokens]
        ended = (bool(tokens) and tokens[-1] == self.tok.eos_id) or (
            prompt_len + len(tokens) >= self.lm.max_len
        )
        return StepDraft(self._text(tokens), len(tokens), d.finished, ended)

    def rewrite(
        self, question: str, steps: Sequence[str], draft: str, max_tokens: int | None = None
    ) -> tuple[StepDraft, int]:
        """This model's greedy next step, using ``draft`` as token speculation.

        The draft (text, so any tokenizer may have written it) is re-encoded and checked in one
        pass: the longest prefix of it this model would have written itself is kept, and the model
        decodes on from there. The step equals ``propose(..., temperature=0)``; only its cost
        differs. Returns the step and how many draft tokens were kept.
        """
        cap = max_tokens or self.config.max_step_tokens
        prompt = self.prompt(question, steps)
        if len(prompt) >= self.lm.max_len:
            return StepDraft("", 0, True, True), 0
        try:
            guess = self.tok.encode(draft)
        except ValueError:  # words this model's tokenizer lacks: no speculation
            guess = []
        stops = [i for i, t in enumerate(guess) if t in (self.delimiter_id, self.tok.eos_id)]
        # the draft may fill the step up to its caps and the sequence up to max_len, less one
        # position for the token the check yields after it
        room = min(cap, self.config.max_step_tokens, self.lm.max_len - len(prompt))
        guess = guess[: min([room - 1, *stops])]
        session = self.lm.session()
        logits = session.extend([*prompt, *guess])
        base = len(prompt) - 1
        kept = 0
        while kept < len(guess) and int(logits[base + kept].argmax()) == guess[kept]:
            kept += 1
        # decode on from the first position the draft got wrong, whose logits are at hand
        session.truncate(len(prompt) + kept)
        limit = min(cap, self.config.max_step_tokens)
        rule = StopRule(limit - kept, self.lm.max_len, self._stops)
        d = decode(session, [], argmax, rule, logits[base + kept])
        step = self._draft(d, len(prompt), guess[:kept])
        # a step cut by the token cap is closed only at the step's own cap
        closed = d.stop != Stop.MAX_NEW or step.tokens >= self.config.max_step_tokens
        return StepDraft(step.text, step.tokens, closed, step.ended), kept

    def draft_steps(self, question: str, steps: Sequence[str], n_steps: int) -> list[StepDraft]:
        """Up to ``n_steps`` greedy steps in one pass of the model (its cache kept throughout).

        A step the sequence's length limit cuts comes last, with ``complete=False``.
        """
        session = self.lm.session()
        prompt = self.prompt(question, steps)
        limit = min(self.lm.max_len, len(prompt) + n_steps * self.config.max_step_tokens)
        rule = StopRule(limit, limit, self._stops)  # the length limit binds, not a token cap
        out: list[StepDraft] = []
        pending = prompt
        while len(out) < n_steps:
            d = decode(session, pending, argmax, rule)
            if d.stop == Stop.STOP_ID:
                ended = d.tokens[-1] == self.tok.eos_id
                out.append(StepDraft(self._text(d.tokens), len(d.tokens), True, ended))
                if ended:
                    break
                pending = d.tokens[-1:]
                continue
            if d.tokens:  # cut mid-step by the length limit: not usable
                out.append(StepDraft(self._text(d.tokens), len(d.tokens), False, True))
            break
        return out

    def _text(self, tokens: list[int]) -> str:
        body = [t for t in tokens if t not in (self.delimiter_id, self.tok.eos_id)]
        return self.tok.decode(body).strip()
