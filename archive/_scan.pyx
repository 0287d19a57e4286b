# cython: language_level=3, boundscheck=False, wraparound=False
"""The re-scan's common case, compiled (see :func:`archive.ingest._scan_compare`).

A re-scan stats every file and finds nearly all unchanged. Through
``os.scandir`` each costs a DirEntry, a stat result and a few Python
operations; here the directory is read with readdir and each plain file
stat'ed with fstatat, and only the files whose stored row says they are
present at this size and mtime are settled. Every other name (directories,
symbolic links, non-ASCII names, other suffixes, new or changed files, a
stat that fails) is handed back for the Python scan to treat as ever.
"""

from posix.stat cimport S_ISREG, fstatat, struct_stat


cdef extern from *:
    """
    #include <errno.h>
    static void obsarch_clear_errno(void) { errno = 0; }
    static int obsarch_errno(void) { return errno; }
    """
    void obsarch_clear_errno()
    int obsarch_errno()


cdef extern from "<dirent.h>" nogil:
    ctypedef struct DIR
    struct dirent:
        unsigned char d_type
        char d_name[1]
    DIR* opendir(const char* name)
    dirent* readdir(DIR* directory)
    int closedir(DIR* directory)
    int dirfd(DIR* directory)
    int DT_REG


def settle_unchanged(bytes directory, str prefix, dict stored, frozenset suffixes):
    """Remove from ``stored`` ({relpath: (root, relpath, id, size, mtime_ns,
    status)}) the regular files of ``directory`` (relpath ``prefix`` + name)
    that are present, of that size and mtime, with an ASCII name ending in
    one of ``suffixes``. Returns (how many, the other names as bytes), or
    (-1, None) when the directory cannot be read (the caller says why)."""
    cdef DIR* listing = opendir(directory)
    cdef dirent* entry
    cdef struct_stat st
    cdef int fd
    cdef Py_ssize_t i, length
    cdef bint plain
    cdef bytes raw
    cdef str name, relpath
    cdef tuple row
    cdef long long mtime
    if listing == NULL:
        return -1, None
    fd = dirfd(listing)
    others = []
    settled_paths = []  # taken out of ``stored`` only once the whole directory was read
    try:
        while True:
            obsarch_clear_errno()  # readdir tells an error from the end only by errno
            entry = readdir(listing)
            if entry == NULL:
                if obsarch_errno() != 0:
                    return -1, None
                break
            raw = entry.d_name
            if raw == b"." or raw == b"..":
                continue
            length = len(raw)
            plain = entry.d_type == DT_REG
            for i in range(length):
                if not plain:
                    break
                if raw[i] > 126 or raw[i] < 32:
                    plain = False
            if not plain:
                others.append(raw)
                continue
            name = raw.decode("ascii")
            i = name.rfind(".")
            if i < 0 or name[i:] not in suffixes:
                others.append(raw)
                continue
            relpath = prefix + name
            row = stored.get(relpath)
            if row is None or fstatat(fd, entry.d_name, &st, 0) != 0 or not S_ISREG(st.st_mode):
                others.append(raw)
                continue
            mtime = <long long>st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec
            if row[5] == "present" and row[3] == st.st_size and row[4] == mtime:
                settled_paths.append(relpath)
            else:
                others.append(raw)
    finally:
        closedir(listing)
    for relpath in settled_paths:
        del stored[relpath]
    return len(settled_paths), others
