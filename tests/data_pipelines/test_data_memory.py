"""Peak memory of prepare + loading does not grow with document length (fresh processes).

The full 1M / 10M-token demonstration is ``python benchmarks/data.py``; this test uses a
~120K-token and a ~1.2M-token document so it stays quick on two cores.
"""

import json
import subprocess
import sys
import textwrap

PROBE = textwrap.dedent(
    """
    import json, sys
    from data_pipelines.prepare import prepare
    from data_pipelines.windows import StoreWindows
    from data_pipelines.loader import RankBatches
    src, out = sys.argv[1], sys.argv[2]
    m = prepare([src], out, "project", progress=False).manifest
    it = iter(RankBatches(StoreWindows(out, 4096), batch_size=2, seed=0))
    for _ in range(40):
        next(it)
    # VmHWM is this process's own peak (ru_maxrss would include the parent's RSS at fork).
    hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    print(json.dumps({"tokens": m["num_tokens"], "docs": m["num_documents"], "peak_rss_mb": hwm / 1024}))
    """
)


def _run(tmp_path, name, copies):
    from data_pipelines.corpus import shipped_documents

    text = "\n\n".join(d["text"] for d in shipped_documents()[:2])  # ~400K tokens
    path = tmp_path / f"{name}.txt"
    with open(path, "w", encoding="utf-8") as fh:
        if copies < 1:
            fh.write(text[: int(len(text) * copies)])
        else:
            for _ in range(copies):
                fh.write(text + "\n\n")
    proc = subprocess.run([sys.executable, "-c", PROBE, str(path), str(tmp_path / f"{name}-store")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_peak_memory_does_not_grow_with_document_length(tmp_path):
    small = _run(tmp_path, "small", 0.6)
    large = _run(tmp_path, "large", 3)
    assert small["docs"] == large["docs"] == 1
    assert large["tokens"] > 4 * small["tokens"] and large["tokens"] > 1_000_000
    # 5x the document, at most a few MB more peak memory (the read block and token buffers).
    assert large["peak_rss_mb"] - small["peak_rss_mb"] < 40, (small, large)
