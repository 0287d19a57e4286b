# cython: language_level=3, boundscheck=False, wraparound=False
"""The re-scan's common case, compiled (see :func:`archive.ingest._scan_compare`).

A re-scan stats every file and finds nearly all unchanged. Through
``os.scandir`` each costs a DirEntry, a stat result and a few Python
operations; here it is done in two steps:

- :func:`read_directory` reads a directory with readdir and stats each
  regular file with fstatat, all without the GIL and with no Python object
  until the end. The stats are system calls (about 3 us each here, 0.15 s
  for 48,000 files) and run on up to ``threads`` POSIX threads, each on its
  own share of the names, joined before the function returns (no thread
  outlives it: ingest forks its readers later). It needs nothing from the
  catalog, so ``obsarch ingest`` runs it while it is still importing
  SQLAlchemy (:mod:`archive.prescan`).
- :func:`settle_unchanged` settles the files whose stored row says they are
  present at this size and mtime. Every other name (directories, symbolic
  links, non-ASCII names, other suffixes, new or changed files, a stat that
  fails) is handed back for the Python scan to treat as ever.
"""

import os

from cpython.long cimport PyLong_AsLongLongAndOverflow
from cpython.unicode cimport PyUnicode_DecodeASCII
from libc.stdlib cimport free
from libc.string cimport memcmp, strlen


cdef extern from *:
    """
    #include <dirent.h>
    #include <errno.h>
    #include <pthread.h>
    #include <stdlib.h>
    #include <string.h>
    #include <sys/stat.h>
    #include <fcntl.h>

    typedef struct {
        char *arena;               /* the names, each ended by a NUL */
        size_t *offsets;           /* where each name starts in arena */
        unsigned char *types;      /* readdir's d_type */
        long long *size, *mtime;   /* of the regular files whose stat worked (ok) */
        char *ok;
        long n;
        unsigned long long dev, ino;  /* the directory's identity */
        long long dir_mtime, dir_ctime;  /* and when its entries last changed, in ns */
    } obsarch_listing;

    typedef struct {
        int fd;
        obsarch_listing *listing;
        long start, stop;
    } obsarch_stat_share;

    static void *obsarch_stat_range(void *arg) {
        obsarch_stat_share *share = (obsarch_stat_share *) arg;
        obsarch_listing *l = share->listing;
        struct stat st;
        for (long i = share->start; i < share->stop; i++) {
            l->ok[i] = 0;
            if (l->types[i] == DT_REG && fstatat(share->fd, l->arena + l->offsets[i], &st, 0) == 0
                    && S_ISREG(st.st_mode)) {
                l->size[i] = (long long) st.st_size;
                l->mtime[i] = (long long) st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec;
                l->ok[i] = 1;
            }
        }
        return NULL;
    }

    /* Stat the regular files of the listing on up to `threads` threads (the
       caller's included); a thread that cannot start leaves its share to
       the caller. Every thread is joined before return. */
    static void obsarch_stat_all(int fd, obsarch_listing *l, int threads) {
        obsarch_stat_share shares[16];
        pthread_t ids[16];
        int started[16];
        long n = l->n;
        if (threads < 1) threads = 1;
        if (threads > 16) threads = 16;
        if (threads > n) threads = n > 0 ? (int) n : 1;
        for (int t = 0; t < threads; t++) {
            shares[t].fd = fd; shares[t].listing = l;
            shares[t].start = n * t / threads; shares[t].stop = n * (t + 1) / threads;
            started[t] = 0;
        }
        for (int t = 1; t < threads; t++)
            started[t] = pthread_create(&ids[t], NULL, obsarch_stat_range, &shares[t]) == 0;
        obsarch_stat_range(&shares[0]);
        for (int t = 1; t < threads; t++) {
            if (started[t]) pthread_join(ids[t], NULL);
            else obsarch_stat_range(&shares[t]);
        }
    }

    static void obsarch_listing_free(obsarch_listing *l) {
        free(l->arena); free(l->offsets); free(l->types); free(l->size); free(l->mtime); free(l->ok);
        memset(l, 0, sizeof(*l));
    }

    /* Read `path` into `l` and stat its regular files; 0, or -1 when the
       directory cannot be opened or read (errno says why), -2 out of memory.
       `parallel_from`: below this many entries, one thread. */
    static int obsarch_read_directory(const char *path, obsarch_listing *l, int threads, long parallel_from) {
        size_t used = 0, room = 0;
        long slots = 0;
        int result = 0;
        struct stat st;
        memset(l, 0, sizeof(*l));
        DIR *listing = opendir(path);
        if (listing == NULL) return -1;
        int fd = dirfd(listing);
        if (fstat(fd, &st) != 0) { closedir(listing); return -1; }
        l->dev = (unsigned long long) st.st_dev; l->ino = (unsigned long long) st.st_ino;
        l->dir_mtime = (long long) st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec;
        l->dir_ctime = (long long) st.st_ctim.tv_sec * 1000000000LL + st.st_ctim.tv_nsec;
        for (;;) {
            errno = 0;  /* readdir tells an error from the end only by errno */
            struct dirent *entry = readdir(listing);
            if (entry == NULL) {
                if (errno != 0) result = -1;
                break;
            }
            const char *name = entry->d_name;
            if (name[0] == '.' && (name[1] == 0 || (name[1] == '.' && name[2] == 0))) continue;
            size_t length = strlen(name) + 1;
            if (used + length > room) {
                size_t grown = room ? room * 2 : 1024;  /* small: a tree of 100,000 directories holds them all */
                while (grown < used + length) grown *= 2;
                char *arena = realloc(l->arena, grown);
                if (arena == NULL) { result = -2; break; }
                l->arena = arena; room = grown;
            }
            if (l->n == slots) {
                long more = slots ? slots * 2 : 32;
                size_t *offsets = realloc(l->offsets, more * sizeof(size_t));
                if (offsets == NULL) { result = -2; break; }
                l->offsets = offsets;
                unsigned char *types = realloc(l->types, more);
                if (types == NULL) { result = -2; break; }
                l->types = types; slots = more;
            }
            memcpy(l->arena + used, name, length);
            l->offsets[l->n] = used;
            l->types[l->n] = entry->d_type;
            used += length;
            l->n++;
        }
        if (result == 0 && l->n > 0 && used < room) {  /* kept until the scan: no room left over */
            char *arena = realloc(l->arena, used);
            if (arena != NULL) l->arena = arena;
        }
        if (result == 0 && l->n > 0 && l->n < slots) {
            size_t *offsets = realloc(l->offsets, l->n * sizeof(size_t));
            if (offsets != NULL) l->offsets = offsets;
            unsigned char *types = realloc(l->types, l->n);
            if (types != NULL) l->types = types;
        }
        if (result == 0 && l->n > 0) {
            l->size = malloc(l->n * sizeof(long long));
            l->mtime = malloc(l->n * sizeof(long long));
            l->ok = malloc(l->n);
            if (l->size == NULL || l->mtime == NULL || l->ok == NULL) result = -2;
            else obsarch_stat_all(fd, l, l->n < parallel_from ? 1 : threads);
        }
        int saved = errno;
        closedir(listing);
        if (result != 0) { obsarch_listing_free(l); errno = saved; }
        return result;
    }
    """
    ctypedef struct obsarch_listing:
        char *arena
        size_t *offsets
        unsigned char *types
        long long *size
        long long *mtime
        char *ok
        long n
        unsigned long long dev
        unsigned long long ino
        long long dir_mtime
        long long dir_ctime
    int obsarch_read_directory(const char *path, obsarch_listing *l, int threads, long parallel_from) nogil
    void obsarch_listing_free(obsarch_listing *l) nogil
    int DT_REG
    int DT_DIR


# Below this many entries, one thread: starting another costs more.
PARALLEL_FROM = 2000


cdef class Listing:
    """A directory as :func:`read_directory` found it: its entries and the
    stat of each regular file. ``key`` is the directory's (st_dev, st_ino,
    st_mtime_ns, st_ctime_ns) when it was read: an entry added, removed or
    renamed since changes the last two, and the listing no longer serves."""

    cdef obsarch_listing listing
    cdef readonly tuple key

    def __dealloc__(self):
        obsarch_listing_free(&self.listing)

    def __len__(self):
        return self.listing.n

    def subdirectories(self):
        """The names (bytes) of the entries that are directories (not links to one)."""
        cdef long i
        return [<bytes> (self.listing.arena + self.listing.offsets[i])
                for i in range(self.listing.n) if self.listing.types[i] == DT_DIR]


def read_directory(bytes directory, int threads=0):
    """``directory`` read and its regular files stat'ed (a :class:`Listing`),
    or None when it cannot be read (the scan tries again and says why).
    ``threads``: how many stat at once (0: the machine's cores, at most 4)."""
    cdef Listing found = Listing.__new__(Listing)
    cdef const char *path = directory
    cdef int result
    cdef long parallel_from = PARALLEL_FROM
    if threads <= 0:
        threads = min(4, os.cpu_count() or 1)
    with nogil:
        result = obsarch_read_directory(path, &found.listing, threads, parallel_from)
    if result == -2:
        raise MemoryError()
    if result != 0:
        return None
    found.key = (found.listing.dev, found.listing.ino, found.listing.dir_mtime, found.listing.dir_ctime)
    return found


cdef bint _ends_in(const char *name, Py_ssize_t length, list endings):
    """Whether the name's last ``.``-part is one of ``endings`` (bytes)."""
    cdef Py_ssize_t i = length - 1
    cdef bytes ending
    while i >= 0 and name[i] != b'.':
        i -= 1
    if i < 0:
        return False
    for ending in endings:
        if len(ending) == length - i and memcmp(name + i, <const char *> ending, length - i) == 0:
            return True
    return False


cdef inline bint _same(object stored, long long found):
    """Whether a stored size or mtime (an int, or None) is ``found``, with
    no int object made for ``found``."""
    cdef int overflow = 0
    if type(stored) is not int:
        return False
    return PyLong_AsLongLongAndOverflow(stored, &overflow) == found and not overflow


def settle_unchanged(bytes directory, str prefix, dict stored, frozenset suffixes, int threads=0, Listing listing=None):
    """Remove from ``stored`` ({relpath: (root, relpath, id, size, mtime_ns,
    status)}) the regular files of ``directory`` (relpath ``prefix`` + name)
    that are present, of that size and mtime, with an ASCII name ending in
    one of ``suffixes``. Returns (how many, the other names as bytes), or
    (-1, None) when the directory cannot be read (the caller says why).
    ``listing``: the directory already read (:func:`read_directory`), else it
    is read now with ``threads``."""
    cdef Py_ssize_t j, length
    cdef long k
    cdef bint plain
    cdef str relpath
    cdef tuple row
    cdef const char *name
    cdef list endings = [ending.encode("ascii") for ending in suffixes if ending.isascii() and ending.startswith(".")]
    if listing is None:
        listing = read_directory(directory, threads)
        if listing is None:
            return -1, None
    cdef obsarch_listing *l = &listing.listing
    others = []
    settled_paths = []  # taken out of ``stored`` only once the whole directory was compared
    for k in range(l.n):
        name = l.arena + l.offsets[k]
        length = strlen(name)
        plain = l.types[k] == DT_REG
        if plain:
            for j in range(length):
                if <unsigned char> name[j] > 126 or <unsigned char> name[j] < 32:
                    plain = False
                    break
        if plain and _ends_in(name, length, endings):  # an ASCII name: its str made straight from the bytes
            relpath = PyUnicode_DecodeASCII(name, length, NULL)
            if prefix:
                relpath = prefix + relpath
            row = stored.get(relpath)
            if (row is not None and l.ok[k] and _same(row[3], l.size[k]) and _same(row[4], l.mtime[k])
                    and row[5] == "present"):
                settled_paths.append(relpath)
                continue
        others.append(<bytes> name[:length])
    for relpath in settled_paths:
        del stored[relpath]
    return len(settled_paths), others
