"""`lmd bench`: every run it is asked for fits the context it sizes, whatever
-p and -g are (a batch's last sequence starts after a ragged prompt of
8 + 4 (B - 1) tokens and decodes 32 more)."""
import subprocess


def test_batched_run_fits_without_prefill(lmd_bin, synth_models):
    # -p 0 -g 4 sized the context from tg alone (84 positions): batch 30's
    # last sequence needs 157 and the run was refused.
    r = subprocess.run([lmd_bin, "bench", "-m", synth_models["llama"], "--device", "cpu", "-t", "2", "-p", "0", "-g",
                        "4", "-b", "30", "-r", "1"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "KV cache too small" not in r.stderr, r.stderr
    assert "batch 30 " in r.stdout, r.stdout
