"""A tiny stateful training run, killed and rerun by test_preemption.py.

``python preempt_script.py CHECKPOINT RESULT [paced]`` trains a character model with a carried
state and recurrent dropout (so the PRNG key matters) for 2 epochs, resuming from CHECKPOINT when
it exists, and saves the final params, optimizer state and history to RESULT. Each batch is
announced on stdout (``batch <global index>``) before it is used; with ``paced`` the data loader
then waits for a line on stdin, so the test decides when each batch arrives (a slow loader) and
where a signal lands, without timing races.
"""

from __future__ import annotations

import sys

import jax
import numpy as np
import optax

import jlstm
import jlstm.train as jt

EPOCHS = 2
CHUNKS = jt.lm_chunks(np.tile(np.array([0, 1, 2, 3, 4, 0, 2, 4]), 24), batch_size=3, chunk_len=4)
STEPS = EPOCHS * len(CHUNKS)
LM = jt.LanguageModel(jlstm.recurrent(jlstm.lstm(6), recurrent_dropout=0.1), vocab_size=5, embed_size=3)
OPTIMIZER = optax.adam(1e-2)


def template() -> dict:
    """The structure of RESULT's tree, for jlstm.checkpoint.load."""
    params = LM.init(jax.random.key(0))
    return {"params": params, "opt_state": OPTIMIZER.init(params)}


def main(checkpoint: str, result: str, paced: bool = False) -> None:
    lm = LM

    def data(epoch):
        for i, chunk in enumerate(CHUNKS):
            print(f"batch {epoch * len(CHUNKS) + i}", flush=True)
            if paced:
                sys.stdin.readline()
            yield chunk

    params, opt_state, hist = jt.fit(
        lm.loss, lm.init(jax.random.key(0)), OPTIMIZER, data, epochs=EPOCHS, key=jax.random.key(1),
        carry=jt.Carry(lm.initial_state, 3), checkpoint_path=checkpoint, resume=True,
        progress=True)
    jlstm.checkpoint.save(result, {"params": params, "opt_state": opt_state},
                          metadata={"loss": hist.loss.tolist(), "epochs": hist.epochs,
                                    "resumed_from": hist.resumed_from})


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], paced=sys.argv[3:] == ["paced"])
