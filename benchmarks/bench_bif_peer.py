"""BIF and susceptibilities: slt against devinterp 2.0.1 on the same tiny model and the same draws.

A 2-layer GPT-2 (built from a config, no downloads) is trained briefly on a synthetic language; slt samples
its localized posterior once, recording the per-token losses of 8 probe sequences at every draw
(``slt.PerSampleLoss``). Those same losses are then turned into influences twice: by ``slt.bif`` and by
devinterp 2.0.1's ``compute_bif`` (given the losses in the DataTree layout its ``sample`` writes), in both
of devinterp's modes: ``"sequence"`` (tokens averaged first) and ``"token"`` (token by token). The table
reports the largest absolute difference, whether every sign agrees, and the Spearman correlation of the
off-diagonal entries (the ordering).

Susceptibilities: ``slt.susceptibilities`` samples the full posterior and the posteriors restricted to two
attention heads (``slt.masks.head``), recording the sampling-task and two probe sets' per-token losses; the
same draws then go to devinterp 2.0.1's ``compute_susceptibilities`` (in the DataTree layout its sampler
writes), and the table reports the largest difference over every (component, probe sequence, token).

devinterp lives in its own environment (benchmarks/README.md); run this script there:

    PYTHONPATH=. /path/to/venv-devinterp/bin/python benchmarks/bench_bif_peer.py  # results/bif_peer.*

Without devinterp the slt side still runs and the peer columns say why they are missing.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from scipy.stats import spearmanr

import slt
from benchmarks.common import RESULTS, environment, peer_status, write_json

VOCAB, LENGTH, SEQUENCES, PROBES = 16, 12, 256, 8


def tiny_gpt2() -> torch.nn.Module:
    import transformers

    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=2, n_head=2, n_embd=32, n_positions=LENGTH, vocab_size=VOCAB, bos_token_id=0, eos_token_id=0
    )
    return transformers.GPT2LMHeadModel(config)


def markov_language(num: int, seed: int) -> torch.Tensor:
    """Sequences of a random sparse Markov chain over ``VOCAB`` tokens: shape (num, LENGTH)."""
    g = torch.Generator().manual_seed(seed)
    table = torch.softmax(3.0 * torch.randn(VOCAB, VOCAB, generator=torch.Generator().manual_seed(0)), -1)
    ids = torch.empty(num, LENGTH, dtype=torch.long)
    ids[:, 0] = torch.randint(VOCAB, (num,), generator=g)
    for t in range(1, LENGTH):
        ids[:, t] = torch.multinomial(table[ids[:, t - 1]], 1, generator=g).squeeze(1)
    return ids


def per_token_loss(model: torch.nn.Module, batch) -> torch.Tensor:
    """Next-token cross-entropy of each sequence's tokens: shape (sequences, LENGTH - 1)."""
    (ids,) = batch
    logits = model(input_ids=ids).logits[:, :-1]
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, VOCAB), ids[:, 1:].reshape(-1), reduction="none"
    ).reshape(ids.shape[0], -1)


def slt_draws() -> tuple[np.ndarray, np.ndarray, slt.LLCResult, torch.nn.Module, torch.Tensor]:
    """Train, sample once: per-token probe losses (chains, draws, probes, tokens), the probes, the result."""
    torch.set_num_threads(1)
    ids = markov_language(SEQUENCES, seed=1)
    model = tiny_gpt2()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(300):
        optimizer.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
    model.eval()
    probes = markov_language(PROBES, seed=2)
    result = slt.estimate_llc(
        model,
        {"input_ids": ids, "labels": ids},
        num_chains=4,
        num_draws=200,
        observables={"probe": slt.PerSampleLoss((probes,), per_token_loss)},
        progress=False,
        seed=0,
    )
    losses = result.observables["probe"][result.diagnostics.healthy_chains]
    return np.asarray(losses, dtype=np.float64), probes.numpy(), result, model, ids


def devinterp_bif(losses: np.ndarray, probes: np.ndarray, method: str) -> np.ndarray:
    """devinterp 2.0.1's ``compute_bif`` on ``losses`` laid out as its ``sample`` writes them."""
    import xarray as xr
    from devinterp.slt.bif import compute_bif

    dataset = xr.Dataset(
        {
            "loss_probe": (("chain", "draw", "batch_probe", "token_pos"), losses),
            "input_ids_probe": (("batch_probe", "token"), probes),
        }
    )
    out = compute_bif(xr.DataTree(dataset), correlation_method=method, device="cpu")
    return np.asarray(out["influences"].values, dtype=np.float64)


def susceptibility_rows(model: torch.nn.Module, ids: torch.Tensor, available: bool) -> list[dict]:
    """slt.susceptibilities of two heads to two probe sets, and devinterp's on the same draws."""
    probes = {"markov": markov_language(PROBES, seed=3), "random": torch.randint(VOCAB, (PROBES, LENGTH))}
    components = {"L0H0": slt.masks.head(model, 0, 0), "L1H1": slt.masks.head(model, 1, 1)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # short chains; the comparison is of the arithmetic on the draws
        ours = slt.susceptibilities(
            model,
            {"input_ids": ids, "labels": ids},
            probes,
            components,
            num_chains=4,
            num_draws=100,
            seed=0,
            progress=False,
        )
    rows = [
        {
            "mode": f"susceptibility {c} / {p}",
            "slt": float(ours.values[i, j]),
            "slt_stderr": float(ours.stderr[i, j]),
        }
        for i, c in enumerate(ours.components)
        for j, p in enumerate(ours.probes)
    ]
    if not available:
        return rows
    import xarray as xr
    from devinterp.slt.susceptibilities import compute_susceptibilities

    def tree(run: slt.LLCResult, with_init: bool) -> xr.DataTree:
        data = {}
        for key, values in run.observables.items():
            values = np.asarray(values, dtype=np.float64)
            data[f"loss_{key}"] = (("chain", "draw", f"batch_{key}", "token_pos"), values)
            data[f"input_ids_{key}"] = ((f"batch_{key}", "token"), np.zeros(values.shape[2:], dtype=np.int64))
        if with_init:
            shape = np.asarray(run.observables["sampling"]).shape  # (chains, draws, samples, tokens)
            data["init_loss"] = (("chain", "token_pos"), np.full((shape[0], shape[3]), ours.init_loss))
        return xr.DataTree(dataset=xr.Dataset(data))

    wr_map = {"full": tree(ours.llc["full"], True)} | {c: tree(ours.llc[c], False) for c in ours.components}
    theirs = compute_susceptibilities(wr_map, "sampling")["susceptibilities"]
    names = list(theirs.attrs["dataset_id_to_name"])
    for row, (c, p) in zip(rows, [(c, p) for c in ours.components for p in ours.probes], strict=True):
        values = theirs.dataset["sus"].sel(wr=c).values[theirs.dataset["dataset_id"].values == names.index(p)]
        mine = ours.per_sample[p][ours.components.index(c)].ravel()
        row["devinterp"] = float(values.mean())
        row["max_abs_diff"] = float(np.max(np.abs(mine - values.ravel())))
        row["signs_agree"] = bool(np.all(np.sign(mine) == np.sign(values.ravel())))
    return rows


def compare(ours: np.ndarray, theirs: np.ndarray) -> dict[str, float | bool]:
    off = ~np.eye(ours.shape[0], dtype=bool)
    if ours.ndim == 4:  # token mode: (probe, probe, token, token); compare every entry of distinct pairs
        ours_off, theirs_off = ours[off].ravel(), theirs[off].ravel()
    else:
        ours_off, theirs_off = ours[off], theirs[off]
    return {
        "max_abs_diff": float(np.max(np.abs(ours - theirs))),
        "signs_agree": bool(np.all(np.sign(ours_off) == np.sign(theirs_off))),
        "spearman_off_diagonal": float(spearmanr(ours_off, theirs_off).statistic),
    }


def main() -> None:
    available, note = peer_status()
    losses, probes, result, model, ids = slt_draws()
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a constant token loss would warn; reported through the values
        ours = {
            "sequence": slt.bif(losses, reduce_tokens=True).values,
            "token": slt.bif(losses).values,
        }
    for method, values in ours.items():
        row = {"mode": method, "shape": list(values.shape), "peer": note}
        if available:
            row.update(compare(values, devinterp_bif(losses, probes, method)))
        rows.append(row)
        print(row, flush=True)
    susceptibilities = susceptibility_rows(model, ids, available)
    for row in susceptibilities:
        print(row, flush=True)
    write_json(
        "bif_peer.json",
        {
            "environment": environment("cpu"),
            "llc": result.mean,
            "draws": list(losses.shape),
            "rows": rows,
            "susceptibilities": susceptibilities,
        },
    )
    lines = [
        f"Tiny GPT-2, {losses.shape[0]} chains × {losses.shape[1]} draws, {PROBES} probe sequences of "
        f"{LENGTH - 1} predicted tokens; λ̂ = {result.mean:.4g}. {note}.",
        "",
        "| mode | shape | max abs difference | signs agree | Spearman (off-diagonal) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {tuple(r['shape'])} | {r.get('max_abs_diff', float('nan')):.2g} "
            f"| {r.get('signs_agree', '—')} | {r.get('spearman_off_diagonal', float('nan')):.6f} |"
        )
    lines += [
        "",
        "| susceptibility | slt (mean over the probe set) | devinterp | max abs difference (every token) "
        "| signs agree |",
        "|---|---|---|---|---|",
    ]
    for r in susceptibilities:
        lines.append(
            f"| {r['mode'].removeprefix('susceptibility ')} | {r['slt']:.4g} ± {r['slt_stderr']:.2g} "
            f"| {r.get('devinterp', float('nan')):.4g} | {r.get('max_abs_diff', float('nan')):.2g} "
            f"| {r.get('signs_agree', '—')} |"
        )
    (RESULTS / "bif_peer.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
