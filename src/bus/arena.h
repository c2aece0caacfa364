/*
 * arena.h - the growing byte buffer a consumer copies a polled batch into
 * (keys, values, headers), shared by the bus backends. Pieces are addressed
 * by offset while the buffer may still move, and turned into pointers once
 * the batch is complete.
 */
#ifndef HERALD_BUS_ARENA_H
#define HERALD_BUS_ARENA_H

#include <stddef.h>

typedef struct bus_arena {
    char *buf;
    size_t len, cap;
} bus_arena;

/* Copy len bytes plus a NUL into the arena; returns their offset. */
size_t bus_arena_put(bus_arena *a, const void *data, size_t len);

#endif
