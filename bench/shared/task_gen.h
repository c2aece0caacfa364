/*
 * task_gen.h - task.created records as the Task API writes them (envelope,
 * traceparent, CloudEvents headers, key = task_id), generated for the
 * benchmarks (agents_bench, kafka_bench) a batch at a time.
 */
#ifndef HERALD_BENCH_TASK_GEN_H
#define HERALD_BENCH_TASK_GEN_H

#include "bus/bus.h"

#include <stddef.h>

/* Receives a batch of records; they are valid only during the call. */
typedef void (*task_gen_sink)(void *arg, const bus_record *recs, size_t n);

/*
 * Generate n task.created records on topic task-events (due in 24 hours,
 * 1,000 owners), batch at a time, and hand each batch to sink. Exits the
 * program with a message naming `program` if an event cannot be built.
 */
void task_gen(const char *program, int n, size_t batch, task_gen_sink sink, void *arg);

#endif
