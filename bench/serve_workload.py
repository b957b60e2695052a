"""Workload descriptions for bench/serve: service classes, tenants, phases,
the S1/S2/S3/S4 presets of shared/bench/WORKLOADS.md, and the seeded arrival
schedule.

Everything random here is drawn from RNGs seeded by the run's seed, one RNG
per aspect (arrival times, class and tenant, lengths, prompt tokens), so the
same seed gives the same schedule on any server, and changing, say, the
length ranges does not move the arrival times. This module sends nothing.
"""
import hashlib
import json
import random
from dataclasses import asdict, dataclass, field


@dataclass
class ClassSpec:
    name: str
    frac: float                    # share of all requests
    prompt: tuple                  # (min, max) prompt tokens, inclusive
    out: tuple                     # (min, max) max_tokens, inclusive
    slo_ttft: float = None         # s; None = no bound
    slo_tpot: float = None         # s; None = no bound
    tenants: list = field(default_factory=list)  # [(tenant, weight)] within this class; [] = no tenant
    priority: str = None           # sent as "priority" and X-Priority; None = the class name
    prefixes: int = 0              # shared "system prompts" to choose from (S4); 0 = none
    prefix_len: int = 0            # tokens of each; `prompt` is then the user turn after it
    prefix_zipf: float = 1.1       # prefix k (0-based) is chosen with weight 1 / (k + 1)^s


@dataclass
class Phase:
    rate: float                    # requests/s (Poisson); ignored by closed loops
    duration: float                # s
    label: str


@dataclass
class Arrival:
    i: int                         # index in the schedule, also the prompt's RNG stream
    t: float                       # s after the run's start; None in closed loops
    phase: str
    cls: str
    tenant: str
    prompt_len: int                # tokens, the shared prefix included
    max_tokens: int
    prefix: int = None             # which shared prefix the prompt starts with; None = none
    prefix_len: int = 0            # its tokens


# S1's mix: 20 % urgent (all gold), 80 % best_effort of which gold sends 1/16
# and bronze 15/16, so bronze's total rate (75 %) is 3x gold's (20 % + 5 %).
def s1_classes():
    return [
        ClassSpec("urgent", 0.2, (32, 256), (32, 128), 1.0, 0.1, [("gold", 1.0)]),
        ClassSpec("best_effort", 0.8, (256, 1024), (128, 256), 15.0, None, [("gold", 1.0), ("bronze", 15.0)]),
    ]


def s3_classes():
    return [ClassSpec("best_effort", 1.0, (4096, 8192), (256, 256), 15.0, None, [])]


# S4: 8 system prompts of 1024 tokens, Zipf(1.1)-chosen, then a 32-128-token
# user turn; max_tokens 32-64.
def s4_classes():
    return [ClassSpec("default", 1.0, (32, 128), (32, 64), None, None, [], None, 8, 1024, 1.1)]


def default_classes():
    return [ClassSpec("default", 1.0, (128, 128), (64, 64), None, None, [])]


# Phases are (fraction of capacity, seconds, label) for presets that need C.
PRESETS = {
    "S1": dict(classes=s1_classes, phases=[(None, 120.0, "steady")], closed=None),
    "S2": dict(classes=s1_classes, phases=[(0.5, 30.0, "base"), (2.5, 30.0, "burst"), (0.5, 30.0, "after")],
               closed=None),
    "S3": dict(classes=s3_classes, phases=[(None, 120.0, "closed")], closed=[4]),
    "S4": dict(classes=s4_classes, phases=[(None, 120.0, "closed")], closed=[2]),
    "custom": dict(classes=default_classes, phases=[(None, 60.0, "steady")], closed=None),
}


def mean_out_tokens(classes):
    """Expected max_tokens per request under the class mix (uniform ranges)."""
    tot = sum(c.frac for c in classes)
    return sum(c.frac / tot * (c.out[0] + c.out[1]) / 2 for c in classes)


def rate_from_capacity(frac, capacity, classes):
    """C is an output rate (tokens/s); a request rate R = frac*C / E[max_tokens]."""
    return frac * capacity / mean_out_tokens(classes)


def _pick(rng, items):
    """items: [(value, weight)]; weights need not sum to 1."""
    tot = sum(w for _, w in items)
    x = rng.random() * tot
    for v, w in items:
        x -= w
        if x < 0:
            return v
    return items[-1][0]


class Sampler:
    """Draws the (class, tenant, lengths) of request i, independent of time."""

    def __init__(self, classes, seed):
        self.classes = classes
        self.by_name = {c.name: c for c in classes}
        self.rng_cls = random.Random("%s-class" % seed)
        self.rng_len = random.Random("%s-length" % seed)

    def draw(self, i, t, phase):
        c = self.by_name[_pick(self.rng_cls, [(c.name, c.frac) for c in self.classes])]
        tenant = _pick(self.rng_cls, c.tenants) if c.tenants else None
        p = self.rng_len.randint(c.prompt[0], c.prompt[1])
        o = self.rng_len.randint(c.out[0], c.out[1])
        if c.prefixes:
            k = _pick(self.rng_cls, [(k, 1.0 / (k + 1) ** c.prefix_zipf) for k in range(c.prefixes)])
            return Arrival(i, t, phase, c.name, tenant, c.prefix_len + p, o, k, c.prefix_len)
        return Arrival(i, t, phase, c.name, tenant, p, o)


def open_schedule(phases, classes, seed):
    """Poisson arrivals, phase after phase: exponential gaps at each phase's
    rate, restarted at each phase boundary (memoryless, so this is exact)."""
    rng_t = random.Random("%s-arrival" % seed)
    s = Sampler(classes, seed)
    out, t0 = [], 0.0
    for ph in phases:
        t = t0
        while ph.rate > 0:
            t += rng_t.expovariate(ph.rate)
            if t >= t0 + ph.duration:
                break
            out.append(s.draw(len(out), t, ph.label))
        t0 += ph.duration
    return out


def closed_sequence(classes, seed):
    """An endless, seeded sequence of requests for closed-loop clients."""
    s = Sampler(classes, seed)
    i = 0
    while True:
        yield s.draw(i, None, "closed")
        i += 1


def prompt_ids(seed, i, n, lo, hi):
    """n token ids drawn uniformly from [lo, hi): request i's prompt. Random
    ids make every prompt distinct, so no server gets prefix-cache hits."""
    rng = random.Random("%s-prompt-%d" % (seed, i))
    return [rng.randrange(lo, hi) for _ in range(n)]


def prefix_ids(seed, k, n, lo, hi):
    """Shared prefix k: the same n token ids in every request that uses it."""
    rng = random.Random("%s-prefix-%d" % (seed, k))
    return [rng.randrange(lo, hi) for _ in range(n)]


# Common English words that are one token each in most vocabularies (with the
# leading space); a text prompt of n words is about n tokens, not exactly.
_WORDS = ("the of and to in is that for it as was with be by on not he this are or his from at which but "
          "have an they you were her she there one all we their can has been more if will would about what "
          "when time said who some them other into only new so could these two may first then any like now "
          "my such make over our even most me state after also made many did must before back see through "
          "way where get much go well your know should down work year because come people just say each").split()


def prompt_text(seed, i, n):
    rng = random.Random("%s-prompt-%d" % (seed, i))
    return " ".join(rng.choice(_WORDS) for _ in range(n))


def schedule_digest(arrivals):
    """A short hash of the schedule: equal digests, identical arrivals."""
    h = hashlib.sha256()
    for a in arrivals:
        row = [a.i, None if a.t is None else round(a.t, 9), a.phase, a.cls, a.tenant, a.prompt_len, a.max_tokens]
        if a.prefix is not None:
            row += [a.prefix, a.prefix_len]
        h.update(json.dumps(row).encode())
    return h.hexdigest()[:16]


def to_jsonable(obj):
    if isinstance(obj, list):
        return [to_jsonable(x) for x in obj]
    return asdict(obj)
