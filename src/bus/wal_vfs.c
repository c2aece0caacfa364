/*
 * wal_vfs.c - an SQLite VFS that writes a commit's WAL frames in one system
 * call (see wal_vfs.h).
 *
 * The VFS is a copy of the default one with another xOpen: a file that is
 * not a WAL is opened by the default VFS into the memory SQLite gave us (so
 * it is exactly the default VFS's file), a WAL file gets a wal_file in
 * front of the default VFS's file, whose methods gather writes and forward
 * everything else. Any method that could observe the file (read, size,
 * sync, truncate, memory map, file controls, close) writes the gathered
 * bytes first, so SQLite never sees the file differ from what it wrote.
 */
#include "bus/wal_vfs.h"

#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <string.h>

/* SQLite's WAL frame header: page number, database size after a commit
 * (0 in other frames), salts, checksums. */
#define WAL_FRAME_HEADER 24

typedef struct wal_file {
    sqlite3_file base;      /* pMethods = &wal_methods */
    sqlite3_file *real;     /* the default VFS's file, right after */
    unsigned char *buf;     /* WAL_VFS_BUFFER bytes, allocated on use */
    size_t len;             /* bytes gathered */
    sqlite3_int64 start;    /* the file offset of buf[0] */
    int commit_header_seen; /* the last write was a commit's frame header */
} wal_file;
/* the default VFS's file follows: keep it aligned */
_Static_assert(sizeof(wal_file) % 8 == 0, "wal_file keeps the file after it aligned");

static sqlite3_vfs *default_vfs;
static sqlite3_vfs wal_vfs;
static int register_rc = SQLITE_ERROR;
static atomic_ullong gathered_writes, system_writes;

/* Write what is gathered; the buffer is empty afterwards either way. */
static int flush(wal_file *f)
{
    if (!f->len)
        return SQLITE_OK;
    int rc = f->real->pMethods->xWrite(f->real, f->buf, (int)f->len, f->start);
    f->len = 0;
    atomic_fetch_add_explicit(&system_writes, 1, memory_order_relaxed);
    return rc;
}

static int wal_close(sqlite3_file *file)
{
    wal_file *f = (wal_file *)file;
    int rc = flush(f);
    int close_rc = f->real->pMethods->xClose(f->real);
    sqlite3_free(f->buf);
    f->buf = NULL;
    return rc != SQLITE_OK ? rc : close_rc;
}

static int wal_read(sqlite3_file *file, void *out, int amount, sqlite3_int64 offset)
{
    wal_file *f = (wal_file *)file;
    int rc = flush(f);
    return rc != SQLITE_OK ? rc : f->real->pMethods->xRead(f->real, out, amount, offset);
}

/* Gather one write; 0 or an SQLite error code. */
static int gather(wal_file *f, const void *data, size_t n, sqlite3_int64 offset)
{
    if (f->len && offset == f->start + (sqlite3_int64)f->len && f->len + n <= WAL_VFS_BUFFER) {
        memcpy(f->buf + f->len, data, n);
        f->len += n;
        atomic_fetch_add_explicit(&gathered_writes, 1, memory_order_relaxed);
        return SQLITE_OK;
    }
    int rc = flush(f);
    if (rc != SQLITE_OK)
        return rc;
    if (!f->buf && n < WAL_VFS_BUFFER)
        f->buf = sqlite3_malloc(WAL_VFS_BUFFER);
    if (!f->buf || n >= WAL_VFS_BUFFER) {
        atomic_fetch_add_explicit(&system_writes, 1, memory_order_relaxed);
        return f->real->pMethods->xWrite(f->real, data, (int)n, offset);
    }
    memcpy(f->buf, data, n);
    f->len = n;
    f->start = offset;
    atomic_fetch_add_explicit(&gathered_writes, 1, memory_order_relaxed);
    return SQLITE_OK;
}

/* A frame header of a commit: bytes 4..7 (big-endian) hold the database's
 * size in pages after the commit, zero in every other frame. */
static int is_commit_frame_header(const unsigned char *data, size_t n)
{
    return n == WAL_FRAME_HEADER && (data[4] | data[5] | data[6] | data[7]) != 0;
}

static int wal_write(sqlite3_file *file, const void *data, int amount, sqlite3_int64 offset)
{
    wal_file *f = (wal_file *)file;
    size_t n = (size_t)amount;
    int commit_page = f->commit_header_seen && n != WAL_FRAME_HEADER;
    f->commit_header_seen = is_commit_frame_header(data, n);
    int rc = gather(f, data, n, offset);
    /* the commit frame's page completes a transaction: out with it now,
     * before SQLite publishes it in the wal-index, whatever the sync mode */
    if (rc == SQLITE_OK && commit_page)
        rc = flush(f);
    return rc;
}

static int wal_truncate(sqlite3_file *file, sqlite3_int64 size)
{
    wal_file *f = (wal_file *)file;
    int rc = flush(f);
    return rc != SQLITE_OK ? rc : f->real->pMethods->xTruncate(f->real, size);
}

static int wal_sync(sqlite3_file *file, int flags)
{
    wal_file *f = (wal_file *)file;
    int rc = flush(f);
    return rc != SQLITE_OK ? rc : f->real->pMethods->xSync(f->real, flags);
}

static int wal_file_size(sqlite3_file *file, sqlite3_int64 *size)
{
    wal_file *f = (wal_file *)file;
    int rc = flush(f);
    return rc != SQLITE_OK ? rc : f->real->pMethods->xFileSize(f->real, size);
}

static int wal_lock(sqlite3_file *file, int level)
{
    wal_file *f = (wal_file *)file;
    return f->real->pMethods->xLock(f->real, level);
}

static int wal_unlock(sqlite3_file *file, int level)
{
    wal_file *f = (wal_file *)file;
    return f->real->pMethods->xUnlock(f->real, level);
}

static int wal_check_reserved_lock(sqlite3_file *file, int *out)
{
    wal_file *f = (wal_file *)file;
    return f->real->pMethods->xCheckReservedLock(f->real, out);
}

static int wal_file_control(sqlite3_file *file, int op, void *arg)
{
    wal_file *f = (wal_file *)file;
    int rc = flush(f);
    return rc != SQLITE_OK ? rc : f->real->pMethods->xFileControl(f->real, op, arg);
}

static int wal_sector_size(sqlite3_file *file)
{
    wal_file *f = (wal_file *)file;
    return f->real->pMethods->xSectorSize(f->real);
}

static int wal_device_characteristics(sqlite3_file *file)
{
    wal_file *f = (wal_file *)file;
    return f->real->pMethods->xDeviceCharacteristics(f->real);
}

/* Shared memory belongs to database files; a WAL file forwards, in case. */
static int wal_shm_map(sqlite3_file *file, int region, int size, int extend, void volatile **out)
{
    wal_file *f = (wal_file *)file;
    if (f->real->pMethods->iVersion < 2)
        return SQLITE_IOERR_SHMMAP;
    return f->real->pMethods->xShmMap(f->real, region, size, extend, out);
}

static int wal_shm_lock(sqlite3_file *file, int offset, int n, int flags)
{
    wal_file *f = (wal_file *)file;
    if (f->real->pMethods->iVersion < 2)
        return SQLITE_IOERR_SHMLOCK;
    return f->real->pMethods->xShmLock(f->real, offset, n, flags);
}

static void wal_shm_barrier(sqlite3_file *file)
{
    wal_file *f = (wal_file *)file;
    if (f->real->pMethods->iVersion >= 2)
        f->real->pMethods->xShmBarrier(f->real);
}

static int wal_shm_unmap(sqlite3_file *file, int delete_flag)
{
    wal_file *f = (wal_file *)file;
    if (f->real->pMethods->iVersion < 2)
        return SQLITE_OK;
    return f->real->pMethods->xShmUnmap(f->real, delete_flag);
}

static int wal_fetch(sqlite3_file *file, sqlite3_int64 offset, int amount, void **out)
{
    wal_file *f = (wal_file *)file;
    *out = NULL; /* "no mapping": SQLite reads instead */
    int rc = flush(f);
    if (rc != SQLITE_OK || f->real->pMethods->iVersion < 3)
        return rc;
    return f->real->pMethods->xFetch(f->real, offset, amount, out);
}

static int wal_unfetch(sqlite3_file *file, sqlite3_int64 offset, void *page)
{
    wal_file *f = (wal_file *)file;
    if (f->real->pMethods->iVersion < 3)
        return SQLITE_OK;
    return f->real->pMethods->xUnfetch(f->real, offset, page);
}

static const sqlite3_io_methods wal_methods = {
    .iVersion = 3,
    .xClose = wal_close,
    .xRead = wal_read,
    .xWrite = wal_write,
    .xTruncate = wal_truncate,
    .xSync = wal_sync,
    .xFileSize = wal_file_size,
    .xLock = wal_lock,
    .xUnlock = wal_unlock,
    .xCheckReservedLock = wal_check_reserved_lock,
    .xFileControl = wal_file_control,
    .xSectorSize = wal_sector_size,
    .xDeviceCharacteristics = wal_device_characteristics,
    .xShmMap = wal_shm_map,
    .xShmLock = wal_shm_lock,
    .xShmBarrier = wal_shm_barrier,
    .xShmUnmap = wal_shm_unmap,
    .xFetch = wal_fetch,
    .xUnfetch = wal_unfetch,
};

static int wal_vfs_open(sqlite3_vfs *vfs, sqlite3_filename name, sqlite3_file *file, int flags,
                        int *out_flags)
{
    (void)vfs;
    if (!(flags & SQLITE_OPEN_WAL))
        return default_vfs->xOpen(default_vfs, name, file, flags, out_flags);
    wal_file *f = (wal_file *)file;
    memset(f, 0, sizeof(*f));
    f->real = (sqlite3_file *)(f + 1);
    int rc = default_vfs->xOpen(default_vfs, name, f->real, flags, out_flags);
    if (rc != SQLITE_OK) {
        if (f->real->pMethods)
            f->real->pMethods->xClose(f->real);
        f->base.pMethods = NULL; /* SQLite does not close a file that failed to open */
        return rc;
    }
    f->base.pMethods = &wal_methods;
    return SQLITE_OK;
}

static void register_once(void)
{
    default_vfs = sqlite3_vfs_find(NULL);
    if (!default_vfs)
        return;
    /* Every method but xOpen is the default VFS's own, called with this
     * VFS: the copy keeps the fields they read (mxPathname, pAppData). */
    wal_vfs = *default_vfs;
    wal_vfs.szOsFile = (int)sizeof(wal_file) + default_vfs->szOsFile;
    wal_vfs.zName = WAL_VFS_NAME;
    wal_vfs.pNext = NULL;
    wal_vfs.xOpen = wal_vfs_open;
    register_rc = sqlite3_vfs_register(&wal_vfs, 0);
}

int wal_vfs_register(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, register_once);
    return register_rc;
}

void wal_vfs_stats(unsigned long long *writes_gathered, unsigned long long *pwrites)
{
    *writes_gathered = atomic_load(&gathered_writes);
    *pwrites = atomic_load(&system_writes);
}
