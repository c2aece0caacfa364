/*
 * config.c - the settings table (see config.h). Adding a setting is one row
 * in `settings` and one field in herald_config.
 */
#include "cli/config.h"

#include "api/server.h"
#include "common/log.h"
#include "common/util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int (*setter_fn)(herald_config *cfg, const char *value, char *err, size_t errlen);

typedef struct setting {
    const char *flag;
    const char *env;
    const char *default_value;
    const char *help;
    setter_fn set;
} setting;

static int set_data_dir(herald_config *cfg, const char *v, char *err, size_t errlen)
{
    if (!*v)
        return util_error(err, errlen, "must not be empty");
    if (strlen(v) > 3000)
        return util_error(err, errlen, "path too long");
    free(cfg->data_dir);
    cfg->data_dir = xstrdup(v);
    return 0;
}

static int set_bus(herald_config *cfg, const char *v, char *err, size_t errlen)
{
    bus_config probe = BUS_CONFIG_INIT;
    if (bus_config_set_url(&probe, v, err, errlen) != 0)
        return -1;
    free(cfg->bus_url);
    cfg->bus_url = xstrdup(v);
    return 0;
}

static int set_retention(herald_config *cfg, const char *v, char *err, size_t errlen)
{
    int64_t ms;
    if (strcmp(v, "0") == 0 || strcmp(v, "forever") == 0) {
        cfg->retention_ms = 0;
        return 0;
    }
    if (util_parse_duration_ms(v, &ms) != 0 || ms <= 0)
        return util_error(err, errlen,
                          "invalid duration '%s' (e.g. 90s, 12h, 7d, or 0 to keep "
                          "everything)",
                          v);
    cfg->retention_ms = ms;
    return 0;
}

static int set_sync(herald_config *cfg, const char *v, char *err, size_t errlen)
{
    if (strcmp(v, "full") == 0)
        cfg->sync_full = 1;
    else if (strcmp(v, "normal") == 0)
        cfg->sync_full = 0;
    else
        return util_error(err, errlen, "must be 'full' or 'normal', not '%s'", v);
    return 0;
}

static int set_log_level(herald_config *cfg, const char *v, char *err, size_t errlen)
{
    if (log_set_level_name(v) != 0)
        return util_error(err, errlen, "must be debug, info, warn, error or off, not '%s'", v);
    free(cfg->log_level);
    cfg->log_level = xstrdup(v);
    return 0;
}

static int set_listen(herald_config *cfg, const char *v, char *err, size_t errlen)
{
    char host[256];
    unsigned port;
    if (api_parse_listen(v, host, sizeof(host), &port) != 0)
        return util_error(err, errlen,
                          "invalid address '%s' (expected HOST:PORT, e.g. "
                          "127.0.0.1:8080)",
                          v);
    free(cfg->listen);
    cfg->listen = xstrdup(v);
    return 0;
}

static const setting settings[] = {
    {"data-dir", "HERALD_DATA_DIR", "./herald-data",
     "directory of the event log (bus.db) and all state", set_data_dir},
    {"bus", "HERALD_BUS", "sqlite", "event bus: 'sqlite' (embedded, in the data directory)",
     set_bus},
    {"retention", "HERALD_RETENTION", "7d",
     "delete events older than this (90s, 12h, 7d; 0 keeps all)", set_retention},
    {"sync", "HERALD_SYNC", "full",
     "'full': fsync every commit (survives power loss); 'normal': survives a crash of "
     "herald but not of the machine",
     set_sync},
    {"log-level", "HERALD_LOG_LEVEL", "info", "debug, info, warn, error or off", set_log_level},
    {"listen", "HERALD_LISTEN", "127.0.0.1:8080",
     "HOST:PORT the Task API listens on (port 0: any free port)", set_listen},
};

size_t config_count(void)
{
    return UTIL_ARRAY_LEN(settings);
}

const char *config_flag(size_t i)
{
    return i < UTIL_ARRAY_LEN(settings) ? settings[i].flag : NULL;
}

int config_set(herald_config *cfg, const char *name, const char *value, char *err, size_t errlen)
{
    for (size_t i = 0; i < UTIL_ARRAY_LEN(settings); i++) {
        if (strcmp(settings[i].flag, name) != 0)
            continue;
        char why[256];
        if (settings[i].set(cfg, value, why, sizeof(why)) != 0)
            return util_error(err, errlen, "--%s: %s", name, why);
        return 0;
    }
    return 1;
}

int config_load(herald_config *cfg, char *err, size_t errlen)
{
    char why[256];
    for (size_t i = 0; i < UTIL_ARRAY_LEN(settings); i++) {
        if (settings[i].set(cfg, settings[i].default_value, why, sizeof(why)) != 0)
            return util_error(err, errlen, "default of %s: %s", settings[i].env, why);
        const char *env = getenv(settings[i].env);
        if (env && settings[i].set(cfg, env, why, sizeof(why)) != 0)
            return util_error(err, errlen, "%s: %s", settings[i].env, why);
    }
    return 0;
}

int config_bus(const herald_config *cfg, bus_config *bus, char *err, size_t errlen)
{
    bus_config b = BUS_CONFIG_INIT;
    if (bus_config_set_url(&b, cfg->bus_url, err, errlen) != 0)
        return -1;
    b.data_dir = cfg->data_dir;
    b.retention_ms = cfg->retention_ms;
    b.synchronous_full = cfg->sync_full;
    *bus = b;
    return 0;
}

void config_print_help(void)
{
    printf("Settings (flag, environment variable, default):\n");
    for (size_t i = 0; i < UTIL_ARRAY_LEN(settings); i++)
        printf("  --%-12s %-18s %-15s %s\n", settings[i].flag, settings[i].env,
               settings[i].default_value, settings[i].help);
}

void config_release(herald_config *cfg)
{
    free(cfg->data_dir);
    free(cfg->bus_url);
    free(cfg->log_level);
    free(cfg->listen);
    herald_config empty = HERALD_CONFIG_INIT;
    *cfg = empty;
}
