"""autostop on-instance checkpoint selection (stdlib only): which entry of the checkpoint directory is the
newest checkpoint that the user's framework can resume from.

Pasted into the checkpoint document's python3 helper (``infra/documents/checkpoint.sh``) at synth time, and
imported directly by the tests. Rules, in the order they are applied to each top-level entry of the directory:

1. Names: temporary-looking names (``is_temp``), symbolic links, names that are not UTF-8 or hold control
   characters, ``*-NNNNN-of-NNNNN.*`` shards at the top level (one file of a sharded model export), files of
   other types than checkpoints (``is_checkpoint_file_name``: a ``.log`` or ``.json`` never is) and directories
   without a step in their name are left out (and never walked).
2. Step (``step_of``): the number after ``step`` (``global_step100``, ``epoch=2-step=260-loss=0.01.ckpt``),
   else after ``iter``/``iteration``, else after ``epoch``, else the last whole number of the name; never a
   decimal (``loss=0.12``), a date or a time of day, nor more than 18 digits. A file whose name has none is
   read: a torch.save / Lightning zip archive gives the ``global_step``, ``step``, ``iteration``, ``iter`` or
   ``epoch`` stored in its pickle, read with ``pickletools`` without executing anything (Lightning's
   ``last.ckpt`` and ``on_exception.ckpt``). An entry with no step anywhere is left out.
3. Completeness (``judge``): no file may be open for writing by any process (``/proc/*/fdinfo`` flags: O_WRONLY
   or O_RDWR); no symbolic link or special file inside; no zero-byte data file; zip archives need an intact
   central directory; safetensors headers must parse and their sizes agree; ``-NNNNN-of-NNNNN`` shard sets and
   ``*.safetensors.index.json`` maps must be whole; Hugging Face Trainer directories need ``trainer_state.json``
   (written last), torch.distributed.checkpoint directories, at any depth, ``.metadata`` (written last),
   Accelerate directories their ``random_states_*.pkl``, orbax directories ``commit_success.txt`` where a
   sibling has one. Other than HF and DCP saves, whose last file proves them, a directory lacking a data file
   (step digits aside) that its newest complete older sibling held before it was written is incomplete.
4. Order (``newer``): by epoch where both name one, then the highest step; modification time only breaks ties.
"""

import errno
import functools
import json
import os
import pickletools
import re
import stat
import struct
import zipfile

# A name looks temporary when it starts with '.' (top level only), ends with '~', contains
# "orbax-checkpoint-tmp", or one of its '.', '-', '_' separated tokens starts with "tmp" or is one of these.
TEMP_TOKENS = frozenset(("temp", "partial", "part", "incomplete", "lock", "inprogress", "writing"))
TOKEN_SEP_RE = re.compile(r"[._-]")
# Named step numbers, by preference; a number followed by ".<digit>" is a decimal, never a step.
NAMED_STEP_RES = (
    ("step", re.compile(r"(?:^|[^a-z])(?:global_)?steps?[=_-]?0*([0-9]{1,18})(?![0-9]|\.[0-9])")),
    ("iter", re.compile(r"(?:^|[^a-z])iter(?:ation)?s?[=_-]?0*([0-9]{1,18})(?![0-9]|\.[0-9])")),
    ("epoch", re.compile(r"(?:^|[^a-z])epochs?[=_-]?0*([0-9]{1,18})(?![0-9]|\.[0-9])")),
)
EPOCH_RE = NAMED_STEP_RES[2][1]
# A date or a time of day in a name (2026-12-05, 20261205, 13-45-30): its numbers are never a step.
DATE_RE = re.compile(r"(?:19|20)[0-9]{2}[-_.]?(?:0[1-9]|1[0-2])[-_.]?(?:0[1-9]|[12][0-9]|3[01])|[0-2][0-9][-_:][0-5][0-9][-_:][0-5][0-9]")
# Any other whole number: at the start, after a non-alphanumeric character other than '.', or right after
# checkpoint/ckpt/model (checkpoint-500, ckpt_7, model100); not the "32" of fp32 nor the "2" of v2.
PLAIN_NUMBER_RE = re.compile(r"(?:^|[^a-z0-9.]|checkpoint|ckpt|model)[-_=]?0*([0-9]{1,18})(?![0-9]|\.[0-9])")
CONTROL_CHARS_RE = re.compile(r"[\x00-\x1f\x7f]")
SHARD_RE = re.compile(r"^(.*)-([0-9]{5})-of-([0-9]{5})(\.[^/]*)?$")
DATA_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".safetensors", ".distcp", ".pkl", ".npy", ".npz", ".msgpack", ".h5", ".tar")
# A top-level file is a checkpoint only with one of these suffixes (or none, with step/iter/epoch in its name).
CHECKPOINT_FILE_SUFFIXES = DATA_SUFFIXES + (".pdparams", ".keras", ".joblib", ".gz", ".zst", ".model")
CONTENT_STEP_KEYS = ("global_step", "step", "iteration", "iter", "epoch")
HF_TRAINER_FILES = ("trainer_state.json", "training_args.bin", "rng_state.pth")
ACCELERATE_FILES = ("optimizer.bin", "scheduler.bin", "sampler.bin")
MAX_PICKLE_BYTES = 64 * 1024 * 1024
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024
SHOW_REJECTED = 5


if "Fail" not in globals():  # run on its own (tests, linters); the documents paste lib/instance.py above
    from instance import Fail, open_dir_nofollow  # Fail: 3 NoCheckpoint, 4 UploadFailed, 6 a file changed during the checkpoint


def show(path):
    return os.fsdecode(path).encode("utf-8", "backslashreplace").decode("utf-8")


def is_temp(name, top):
    low = name.lower()
    if (top and low.startswith(".")) or low.endswith("~") or "orbax-checkpoint-tmp" in low:
        return True
    return any(t.startswith("tmp") or t in TEMP_TOKENS for t in TOKEN_SEP_RE.split(low))


def step_of(name):
    """(step, source) that a checkpoint name carries, e.g. (260, "name:step") for ``epoch=2-step=260.ckpt``;
    (None, None) when the name holds no step. Numbers of a date or time of day never count."""
    low = DATE_RE.sub("-", name.lower())
    for source, pattern in NAMED_STEP_RES:
        match = pattern.search(low)
        if match:
            return int(match.group(1)), f"name:{source}"
    numbers = PLAIN_NUMBER_RE.findall(low)
    return (int(numbers[-1]), "name:number") if numbers else (None, None)


def epoch_of(name):
    """The epoch a checkpoint name carries (``epoch=2-step=260.ckpt`` → 2), else None."""
    match = EPOCH_RE.search(DATE_RE.sub("-", name.lower()))
    return int(match.group(1)) if match else None


def is_checkpoint_file_name(name):
    """Can a top-level regular file of this name be a checkpoint? Checkpoint suffixes only (``.log``, ``.json``,
    ``.txt`` are never one); a name without a suffix only with a step, iter or epoch in it."""
    low = name.lower()
    if low.endswith(CHECKPOINT_FILE_SUFFIXES):
        return True
    return "." not in low and any(p.search(low) for _, p in NAMED_STEP_RES)


# --- who writes what: /proc --------------------------------------------------------------------------


def open_for_write(proc="/proc"):
    """({(st_dev, st_ino): pid} of files some process holds open for writing, None or why /proc is unreadable).

    Reads every ``/proc/<pid>/fd/<n>`` (stat through the link: the open file itself) whose
    ``/proc/<pid>/fdinfo/<n>`` flags have O_WRONLY or O_RDWR. Processes that vanish meanwhile are skipped."""
    try:
        pids = [p for p in os.listdir(proc) if p.isdigit()]
    except OSError as exc:
        return {}, f"{proc} is unreadable ({exc.strerror}): files still being written cannot be detected"
    held, denied = {}, 0
    for pid in pids:
        try:
            fds = os.listdir(f"{proc}/{pid}/fd")
        except FileNotFoundError:
            continue
        except OSError:
            denied += 1
            continue
        for fd in fds:
            key = _written_file(f"{proc}/{pid}", fd)
            if key:
                held.setdefault(key, int(pid))
    why = f"{denied} process(es) in {proc} could not be inspected (run as root)" if denied else None
    return held, why


def _written_file(procdir, fd):
    try:
        with open(f"{procdir}/fdinfo/{fd}", encoding="ascii") as f:
            flags = next((int(line.split()[1], 8) for line in f if line.startswith("flags:")), 0)
        if not flags & (os.O_WRONLY | os.O_RDWR):
            return None
        st = os.stat(f"{procdir}/fd/{fd}")
    except (OSError, ValueError, IndexError):
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISREG(st.st_mode) else None


# --- what a file holds ---------------------------------------------------------------------------------


def _open_nofollow(path):
    return os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC), "rb")


def file_check(path, size):
    """(rule, None) when the file at PATH passes the cheap structural check its format has, or (None, why not).

    zip (torch.save, Lightning .ckpt, Accelerate .bin/.pkl): an intact central directory; safetensors: the
    header parses and its tensors end exactly at the file's end; other formats: not empty when data-like."""
    low = path.lower()
    if size == 0:
        return (None, "it is empty (0 bytes)") if low.endswith(DATA_SUFFIXES) else ("empty", None)
    try:
        with _open_nofollow(path) as f:
            head = f.read(8)
            if head.startswith(b"PK\x03\x04"):
                return _zip_check(f)
            if low.endswith(".safetensors"):
                return _safetensors_check(f, head, size)
    except OSError as exc:
        return None, f"it cannot be read ({exc.strerror})"
    return "no format check", None


def _zip_check(f):
    try:
        with zipfile.ZipFile(f) as zf:
            zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return None, "its zip archive (torch.save) has no intact central directory: the save was cut short"
    return "zip central directory intact", None


def _safetensors_check(f, head, size):
    if len(head) < 8:
        return None, "its safetensors header is cut short"
    (length,) = struct.unpack("<Q", head)
    if length > min(size - 8, MAX_SAFETENSORS_HEADER):
        return None, "its safetensors header is longer than the file: the save was cut short"
    try:
        header = json.loads(f.read(length))
        ends = [int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"]
        end = 8 + length + max(ends, default=0)
    except Exception:  # not JSON, not an object, offsets that are not numbers
        return None, "its safetensors header does not parse"
    if end != size:
        return None, f"its safetensors tensors end at byte {end} but the file has {size}"
    return "safetensors header and size agree", None


def content_step(path):
    """(step, "contents:<key>", epoch) stored in a torch.save/Lightning zip archive's pickle, else (None, None, None).

    The pickle is walked with ``pickletools.genops`` (opcodes only, nothing executed); the first integer
    value of a string key in ``CONTENT_STEP_KEYS`` counts, keys earlier in that tuple winning; ``epoch`` is
    also returned on its own."""
    try:
        with _open_nofollow(path) as f, zipfile.ZipFile(f) as zf:
            entry = next((i for i in zf.infolist() if i.filename.endswith("data.pkl")), None)
            if entry is None or entry.file_size > MAX_PICKLE_BYTES:
                return None, None, None
            data = zf.read(entry)
    except Exception:  # not a zip, a damaged one, an unsupported compression: no step from it
        return None, None, None
    found = {k: v for k, v in _pickle_ints(data).items() if 0 <= v < 10**18}
    key = next((k for k in CONTENT_STEP_KEYS if k in found), None)
    return (found[key], f"contents:{key}", found.get("epoch")) if key else (None, None, None)


def _pickle_ints(data):
    """{key: int} for string keys directly followed by an integer in a pickle (memo references followed)."""
    found, memo, last = {}, {}, None
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"):
                last = arg
            elif op.name in ("BINPUT", "LONG_BINPUT", "PUT"):
                memo[arg] = last
            elif op.name == "MEMOIZE":
                memo[len(memo)] = last
            elif op.name in ("BINGET", "LONG_BINGET", "GET"):
                last = memo.get(arg)
            elif op.name in ("BININT", "BININT1", "BININT2", "LONG1", "LONG4", "INT", "LONG") and isinstance(arg, int):
                if isinstance(last, str) and last in CONTENT_STEP_KEYS and not isinstance(arg, bool):
                    found.setdefault(last, arg)
                last = None
            else:
                last = None
    except Exception:  # a damaged pickle: keep what was read
        pass
    return found


# --- the entries of the checkpoint directory ------------------------------------------------------------


def refuse_symlinked(ckdir):
    real = os.path.realpath(ckdir)
    if real != os.path.normpath(ckdir):
        raise Fail(3, f"checkpoint-dir {ckdir} is or passes through a symbolic link (to {real}); tag the real path")


def list_checkpoint_dir(ckdir):
    """(descriptor, sorted names) of the checkpoint directory, opened without following links; Fail(3) else."""
    refuse_symlinked(ckdir)
    try:
        ckfd = open_dir_nofollow(ckdir)  # and should a link have been swapped in since the check: ELOOP or ENOTDIR
        return ckfd, sorted(os.listdir(ckfd))
    except FileNotFoundError:
        raise Fail(3, f"the checkpoint directory {ckdir} does not exist on this instance; check the checkpoint-dir tag") from None
    except OSError as exc:
        refuse_symlinked(ckdir)
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise Fail(3, f"the checkpoint directory {ckdir} is not a directory; check the checkpoint-dir tag") from None
        raise Fail(3, f"cannot list the checkpoint directory {ckdir}: {exc.strerror}") from None


def _log(message):
    import sys

    print(f"checkpoint: {message}", file=sys.stderr)


def scan_dir(ckdir, ckfd, name):
    """([file], None) of directory checkpoint NAME, or (None, why it is not complete). A file is a dict
    (abs, rel, size, mtime_ns, dev, ino) from lstat; symbolic links and special files below NAME are skipped."""
    files, walked = [], False

    def onerror(exc):
        where = exc.filename if isinstance(exc.filename, str) else name  # a descriptor when listing failed
        raise Fail(4, f"cannot read {show(os.path.join(ckdir, where))}: {exc.strerror}; fix its permissions and retry")

    # fwalk opens each directory relative to its parent's descriptor and never enters a symbolic link, even
    # one swapped in while it walks.
    for root, dirs, names, rootfd in os.fwalk(name, onerror=onerror, follow_symlinks=False, dir_fd=ckfd):
        walked = True
        for entry in sorted(dirs + names):
            if is_temp(entry, top=False):
                return None, f"it contains {show(os.path.join(root, entry))}, which is temporary"
        for entry in sorted(dirs + names):
            full = os.path.join(ckdir, root, entry)
            st = _lstat(entry, rootfd, full)
            rel = os.path.relpath(os.path.join(root, entry), name)
            if stat.S_ISREG(st.st_mode):
                files.append(_file(full, rel, st))
            elif stat.S_ISLNK(st.st_mode):  # its data would be missing from the upload: never a complete checkpoint
                return None, f"it contains a symbolic link, {show(rel)}, which autostop does not follow; save the file itself there"
            elif not stat.S_ISDIR(st.st_mode):
                return None, f"it contains {show(rel)}, which is not a regular file"
    if not walked:
        return None, "it was replaced while it was being scanned"
    if not files:
        return None, "it holds no files"
    files.sort(key=lambda f: f["rel"])
    return files, None


def _lstat(entry, fd, path):
    try:
        return os.stat(entry, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise Fail(4, f"cannot read {show(path)}: {exc.strerror}; fix its permissions and retry") from None


def _file(full, rel, st):
    return {"abs": full, "rel": rel, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "dev": st.st_dev, "ino": st.st_ino}


def entry_candidate(ckdir, ckfd, name):
    """A candidate dict for top-level entry NAME (``why`` set when it is left out), or None if it vanished."""
    try:
        st = os.stat(name, dir_fd=ckfd, follow_symlinks=False)
        cand = {"name": name, "is_dir": stat.S_ISDIR(st.st_mode), "mtime_ns": st.st_mtime_ns, "files": [], "why": None}
        cand["step"], cand["step_source"] = step_of(name)
        cand["epoch"] = epoch_of(name)
        cand["why"] = _name_problem(name, st, cand)
        if cand["why"] is None and stat.S_ISREG(st.st_mode):
            cand["files"] = [_file(os.path.join(ckdir, name), name, st)]
            if cand["step"] is None:
                cand["step"], cand["step_source"], cand["epoch"] = content_step(os.path.join(ckdir, name))
        elif cand["why"] is None:
            cand["files"], cand["why"] = scan_dir(ckdir, ckfd, name)
            cand["files"] = cand["files"] or []
        if cand["why"] is None and cand["step"] is None:
            cand["why"] = "no step number in its name or contents"
    except FileNotFoundError:
        _log(f"{show(os.path.join(ckdir, name))} disappeared while it was being scanned; ignoring it")
        return None
    except OSError as exc:
        where = show(os.path.join(ckdir, exc.filename or name))
        raise Fail(4, f"cannot read {where}: {exc.strerror}; fix its permissions and retry") from None
    if cand["files"]:
        cand["mtime_ns"] = max(f["mtime_ns"] for f in cand["files"])
    return cand


def _name_problem(name, st, cand):
    """Why top-level entry NAME (lstat ST) can never be a checkpoint, judged by its name and type alone; or None."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "its name is not valid UTF-8 and cannot be an S3 key; rename it"
    if CONTROL_CHARS_RE.search(name):
        return "its name contains control characters; rename it"
    if is_temp(name, top=True):
        return "temporary name"
    if stat.S_ISLNK(st.st_mode):
        return "symbolic link"
    if SHARD_RE.match(name):
        return "one shard of a sharded save, not a checkpoint on its own; save shards into a step directory"
    if stat.S_ISREG(st.st_mode):
        return None if is_checkpoint_file_name(name) else "not a checkpoint file type (.pt, .pth, .ckpt, .bin, .safetensors, ...)"
    if not cand["is_dir"]:
        return "not a regular file or directory"
    return "no step number in its name" if cand["step"] is None else None


# --- completeness ------------------------------------------------------------------------------------


def _norm(rel, step):
    """REL with STEP's digits (with leading zeros) replaced by '#', so two checkpoints' file names compare."""
    return re.sub(r"(?<![0-9])0*%d(?![0-9])" % step, "#", rel) if step is not None else rel


def judge(cand, held, reference, orbax_commits):
    """(rule, None) when candidate CAND is complete, else (None, why). HELD: files open for writing
    ({(dev, ino): pid}); REFERENCE: its newest complete older directory sibling or None; ORBAX_COMMITS: whether
    any sibling holds orbax's commit_success.txt."""
    for f in cand["files"]:
        if (f["dev"], f["ino"]) in held:
            return None, f"{f['rel']} is open for writing by pid {held[(f['dev'], f['ino'])]}: a save is in progress"
    rules = []
    for f in cand["files"]:
        rule, why = file_check(f["abs"], f["size"])
        if why:
            return None, f"{f['rel']}: {why}" if cand["is_dir"] else why
        rules.append(rule)
    if all(f["size"] == 0 for f in cand["files"]):
        return None, "it holds only empty files"
    if not cand["is_dir"]:
        return rules[0], None
    why = _whole_sets(cand) or _nested_dcp_missing(cand) or _layout_missing(cand, orbax_commits)
    if not why and _layout(cand) not in SELF_PROVING:
        why = _lacks_sibling_files(cand, reference)
    return (None, why) if why else (_layout_rule(cand), None)


def _whole_sets(cand):
    rels = {f["rel"] for f in cand["files"]}
    for rel in sorted(rels):
        match = SHARD_RE.match(rel)
        if match:
            stem, _, total, suffix = match.groups()
            for i in range(1, int(total) + 1):
                if f"{stem}-{i:05d}-of-{total}{suffix or ''}" not in rels:
                    return f"shard {i} of {int(total)} ({stem}-{i:05d}-of-{total}{suffix or ''}) is missing"
        if rel.endswith(".safetensors.index.json"):
            missing = _index_missing(cand, rel, rels)
            if missing:
                return f"{rel} maps weights to {missing}, which is missing"
    return None


def _index_missing(cand, rel, rels):
    path = next(f["abs"] for f in cand["files"] if f["rel"] == rel)
    try:
        with _open_nofollow(path) as f:
            names = {v for v in json.load(f).get("weight_map", {}).values() if isinstance(v, str)}
    except Exception:
        return f"{rel} (unreadable)"
    base = os.path.dirname(rel)
    return next((v for v in sorted(names) if os.path.join(base, v) not in rels), None)


def _layout(cand):
    """The framework whose directory layout CAND has, from the files at its top: hf-trainer, dcp, accelerate,
    orbax or None."""
    names = {f["rel"] for f in cand["files"] if "/" not in f["rel"]}
    if names & set(HF_TRAINER_FILES) or any(n.startswith("rng_state_") and n.endswith(".pth") for n in names):
        return "hf-trainer"
    if any(n.endswith(".distcp") for n in names):
        return "dcp"
    if names & set(ACCELERATE_FILES) or any(n.startswith("random_states_") for n in names):
        return "accelerate"
    if names & {"_CHECKPOINT_METADATA", "commit_success.txt"}:
        return "orbax"
    return None


SELF_PROVING = ("hf-trainer", "dcp")
"""Layouts whose last-written file proves the save finished, whatever an older sibling held (Accelerate writes
registered objects after its random states, so it is not one)."""

LAYOUT_NEEDS = {
    "hf-trainer": ("trainer_state.json", "Hugging Face Trainer writes trainer_state.json last"),
    "dcp": (".metadata", "torch.distributed.checkpoint writes .metadata last"),
    "accelerate": ("random_states_*.pkl", "Accelerate's save_state writes its random states last"),
    "orbax": ("commit_success.txt", "orbax writes commit_success.txt when the save is committed"),
}


def _layout_missing(cand, orbax_commits):
    layout = _layout(cand)
    if layout is None or (layout == "orbax" and not orbax_commits):
        return None
    needed, why = LAYOUT_NEEDS[layout]
    names = {f["rel"] for f in cand["files"] if "/" not in f["rel"] and (f["size"] > 0 or needed == "commit_success.txt")}
    present = any(n.startswith("random_states_") and n.endswith(".pkl") for n in names) if layout == "accelerate" else needed in names
    return None if present else f"no {needed} ({why}): the save did not finish"


def _nested_dcp_missing(cand):
    """Why a torch.distributed.checkpoint save nested in CAND (a directory of ``*.distcp`` below its top) is
    incomplete, or None: DCP writes ``.metadata`` into the same directory last."""
    dirs = {os.path.dirname(f["rel"]) for f in cand["files"] if f["rel"].endswith(".distcp") and "/" in f["rel"]}
    present = {os.path.dirname(f["rel"]) for f in cand["files"] if os.path.basename(f["rel"]) == ".metadata" and f["size"] > 0}
    missing = sorted(dirs - present)
    if not missing:
        return None
    return f"{missing[0]}/ holds torch.distributed.checkpoint shards but no .metadata (written last): the save did not finish"


def _layout_rule(cand):
    layout = _layout(cand)
    if layout:
        return f"{layout}: {LAYOUT_NEEDS[layout][0]} present, every file passes its format check"
    return "every file passes its format check"


def _lacks_sibling_files(cand, reference):
    """Why CAND lacks a data file that REFERENCE (its newest complete older sibling) held before CAND was written,
    or None. Only data files count (``DATA_SUFFIXES``: an evaluation job's ``eval_results.json`` never does), and
    names are compared with each one's own step number replaced (``model_step100.pt`` ~ ``model_step200.pt``)."""
    if reference is None:
        return None
    exact = {f["rel"]: f for f in cand["files"]}
    normed = {_norm(f["rel"], cand["step"]): f for f in cand["files"]}
    for f in reference["files"]:
        if not f["rel"].lower().endswith(DATA_SUFFIXES) or f["mtime_ns"] >= cand["mtime_ns"]:
            continue  # not data, or added to the sibling after this checkpoint was written
        own = exact.get(f["rel"]) or normed.get(_norm(f["rel"], reference["step"]))
        if own is None:
            return f"it lacks {f['rel']}, which {reference['name']} has: the save did not finish"
        if own["size"] == 0 and f["size"] > 0:
            return f"{own['rel']} is empty, but {reference['name']}'s is {f['size']} bytes: the save did not finish"
    return None


# --- the choice ---------------------------------------------------------------------------------------


def newer(a, b):
    """> 0 when candidate A is newer than B: by epoch where both name one and they differ (``epoch1_step900``
    is older than ``epoch2_step100``), else by step (none lowest), then modification time, then name."""
    if a.get("epoch") is not None and b.get("epoch") is not None and a["epoch"] != b["epoch"]:
        return a["epoch"] - b["epoch"]
    ka = (a["step"] if a["step"] is not None else -1, a["mtime_ns"], a["name"])
    kb = (b["step"] if b["step"] is not None else -1, b["mtime_ns"], b["name"])
    return (ka > kb) - (ka < kb)


order_key = functools.cmp_to_key(newer)


def select(ckdir, held=None):
    """The checkpoint to upload from directory CKDIR: a dict with ``chosen`` (a complete candidate or None),
    ``rejected`` (every entry left out, newest first, each with ``why``), ``candidates`` (how many were
    considered) and ``open_check`` (None, or why files being written could not all be detected).

    A candidate is {name, is_dir, step, step_source, epoch, mtime_ns, files, why, rule}; each file
    {abs, rel, size, mtime_ns, dev, ino}. Raises Fail(3) when CKDIR is missing, not a directory or a link;
    Fail(4) on unreadable entries."""
    if held is None:
        held, open_check = open_for_write()
    else:
        open_check = None
    ckfd, names = list_checkpoint_dir(ckdir)
    try:
        cands = [c for c in (entry_candidate(ckdir, ckfd, n) for n in names) if c is not None]
    finally:
        os.close(ckfd)
    orbax_commits = any(f["rel"].endswith("commit_success.txt") for c in cands for f in c["files"])
    reference = None
    for cand in sorted((c for c in cands if c["why"] is None), key=order_key):
        cand["rule"], cand["why"] = judge(cand, held, reference, orbax_commits)
        if cand["why"] is None and cand["is_dir"]:
            reference = cand
    complete = [c for c in cands if c["why"] is None]
    rejected = sorted((c for c in cands if c["why"] is not None), key=order_key, reverse=True)
    chosen = max(complete, key=order_key) if complete else None
    return {"chosen": chosen, "rejected": rejected, "candidates": len(cands), "open_check": open_check}


def describe_rejected(rejected, limit=SHOW_REJECTED):
    """[{name, step, reason}] of the newest LIMIT rejected entries (for the manifest and the result line)."""
    return [{"name": show(c["name"])[:200], "step": c["step"], "reason": c["why"][:300]} for c in rejected[:limit]]


def listing(rejected, limit=SHOW_REJECTED):
    """ "name (why), ..." of the newest LIMIT rejected entries, for messages."""
    text = ", ".join(f"{show(c['name'])[:100]} ({c['why']})" for c in rejected[:limit])
    return text + (f", and {len(rejected) - limit} more" if len(rejected) > limit else "")


def saving_now(selection):
    """Is a save in progress (some rejected candidate has a file open for writing)?"""
    return any("is open for writing" in (c["why"] or "") for c in selection["rejected"])


NO_CHECKPOINT_HINT = (
    "A checkpoint is a file or a directory of files whose name carries its step number (step-100, "
    "checkpoint-100, epoch=2-step=260.ckpt) or, for a torch.save/Lightning file, whose contents do, that no "
    "process is still writing and whose framework's files are all there"
)


def no_checkpoint(ckdir, found):
    if not found["candidates"]:
        return f"no complete checkpoint in {ckdir}: it is empty. {NO_CHECKPOINT_HINT}"
    return f"no complete checkpoint in {ckdir}: rejected {listing(found['rejected'])}. {NO_CHECKPOINT_HINT}"


def summary(choice):
    """One line: what was chosen, its step and rule, and the newest rejected entry with its reason."""
    text = f"chose {choice['name']} (step {choice['step']}, {choice['rule']})"
    newer = [r for r in choice["rejected"] if (r["step"] if r["step"] is not None else -1) >= (choice["step"] or 0)]
    if newer:
        text += f"; rejected {newer[0]['name']} ({newer[0]['reason']})"
        if len(newer) > 1:
            text += f" and {len(newer) - 1} more"
    return text[:600]
