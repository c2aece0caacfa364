/*
 * config.h - herald's settings: one table drives every setting's name,
 * environment variable, command-line flag, default, validation and help.
 *
 * Precedence: built-in default < environment (HERALD_*) < command-line flag.
 * Every value from outside is validated; a bad one is an error that names
 * the variable or flag and the value.
 */
#ifndef HERALD_CONFIG_H
#define HERALD_CONFIG_H

#include "bus/bus.h"

#include <stddef.h>
#include <stdint.h>

typedef struct herald_config {
    char *data_dir;       /* HERALD_DATA_DIR, --data-dir */
    char *bus_url;        /* HERALD_BUS, --bus */
    int64_t retention_ms; /* HERALD_RETENTION, --retention */
    int sync_full;        /* HERALD_SYNC, --sync: full (1) or normal (0) */
    char *log_level;      /* HERALD_LOG_LEVEL, --log-level */
    char *listen;         /* HERALD_LISTEN, --listen: HOST:PORT of the Task API */
} herald_config;

/* clang-format off */
#define HERALD_CONFIG_INIT {NULL, NULL, 0, 1, NULL, NULL}
/* clang-format on */

/* Fill cfg with the defaults, then apply the environment. 0 or -1 + err. */
int config_load(herald_config *cfg, char *err, size_t errlen);

/*
 * Apply one setting by its flag name ("data-dir", "bus", ...). Returns 0,
 * 1 if name is not a setting, or -1 with err filled for a bad value.
 */
int config_set(herald_config *cfg, const char *name, const char *value, char *err, size_t errlen);

/* Fill a bus configuration from cfg (pointers borrow cfg's strings). */
int config_bus(const herald_config *cfg, bus_config *bus, char *err, size_t errlen);

/* Print the settings table (flag, variable, default, meaning) for --help. */
void config_print_help(void);

/* Free cfg's strings and reset it. */
void config_release(herald_config *cfg);

/* Number of settings and the flag name of the i-th (for getopt tables). */
size_t config_count(void);
const char *config_flag(size_t i);

#endif
