/*
 * wal_vfs.h - an SQLite VFS that writes a commit's WAL frames in one system
 * call.
 *
 * SQLite writes each WAL frame as two pwrite()s (the 24-byte frame header,
 * then the page), so a commit of 11 pages costs 22 system calls before its
 * fsync. This VFS wraps the default one and, for WAL files only, gathers
 * consecutive writes in a buffer (WAL_VFS_BUFFER bytes) and writes them
 * with one pwrite() once the commit frame (the last frame of a
 * transaction) is complete, or earlier when a write is not contiguous, the
 * buffer is full, or SQLite syncs, reads, truncates, asks the size of or
 * closes the file. Every other file (the database, temporary files) is the
 * default VFS's file, untouched.
 *
 * SQLite publishes a commit's frames to other connections (the wal-index
 * header) only after it has written the commit frame, so whatever the
 * synchronous setting no connection can look for a frame still in the
 * buffer, and a crash loses only frames of a transaction that had not
 * committed. A failed write of the buffer is reported to SQLite by the
 * write or sync that caused it: the transaction fails and is rolled back,
 * exactly as when a pwrite() of its own fails.
 */
#ifndef HERALD_WAL_VFS_H
#define HERALD_WAL_VFS_H

/* The VFS's name, for sqlite3_open_v2(). */
#define WAL_VFS_NAME "herald-wal"
/* Bytes gathered at most before they are written. */
#define WAL_VFS_BUFFER (128 * 1024)

/* Register the VFS (not as the default) once per process; thread-safe.
 * 0, or an SQLite error code. */
int wal_vfs_register(void);

/* Writes and system calls of WAL files through this VFS since the process
 * started (for tests and benchmarks). */
void wal_vfs_stats(unsigned long long *writes_gathered, unsigned long long *pwrites);

#endif
