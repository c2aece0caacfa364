/*
 * kafka_admin.c - see kafka_admin.h. Each call builds its own client and
 * destroys it: these are operator paths (a readiness probe cached by its
 * caller, a `herald lag` run), not per-event work.
 */
#include "bus/kafka_admin.h"

#include "common/log.h"
#include "common/util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void admin_log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    LOG_DEBUG("kafka admin: %s: %s", fac, buf);
}

static int set(rd_kafka_conf_t *conf, const char *name, const char *value, char *err, size_t errlen)
{
    char why[512];
    if (rd_kafka_conf_set(conf, name, value, why, sizeof(why)) != RD_KAFKA_CONF_OK)
        return util_error(err, errlen, "Kafka property '%s': %s", name, why);
    return 0;
}

rd_kafka_t *bus_kafka_admin_client(const bus_config *cfg, const char *group_id, char *err,
                                   size_t errlen)
{
    if (!cfg->bootstrap || !*cfg->bootstrap) {
        util_error(err, errlen, "Kafka bus without bootstrap servers (kafka:HOST:PORT[,...])");
        return NULL;
    }
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set_log_cb(conf, admin_log_cb);
    if (set(conf, "bootstrap.servers", cfg->bootstrap, err, errlen) != 0 ||
        set(conf, "client.id", cfg->client_id ? cfg->client_id : "herald-ops", err, errlen) != 0 ||
        set(conf, "enable.auto.commit", "false", err, errlen) != 0 ||
        (group_id && set(conf, "group.id", group_id, err, errlen) != 0))
        goto fail;
    for (const char *const *p = cfg->kafka_props; p && *p; p++) {
        const char *eq = strchr(*p, '=');
        if (!eq || eq == *p) {
            util_error(err, errlen, "Kafka property '%s' is not name=value", *p);
            goto fail;
        }
        char *name = xstrndup(*p, (size_t)(eq - *p));
        int rc = set(conf, name, eq + 1, err, errlen);
        free(name);
        if (rc != 0)
            goto fail;
    }
    char why[512];
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, why, sizeof(why));
    if (!rk) {
        util_error(err, errlen, "cannot create a Kafka client: %s", why);
        goto fail;
    }
    return rk; /* owns conf now */
fail:
    rd_kafka_conf_destroy(conf);
    return NULL;
}

int bus_kafka_ping(const bus_config *cfg, int timeout_ms, char *err, size_t errlen)
{
    rd_kafka_t *rk = bus_kafka_admin_client(cfg, NULL, err, errlen);
    if (!rk)
        return -1;
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_resp_err_t e = rd_kafka_metadata(rk, 0, NULL, &md, timeout_ms);
    int rc = 0;
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR)
        rc = util_error(err, errlen, "no answer from the Kafka brokers %s within %d ms: %s",
                        cfg->bootstrap, timeout_ms, rd_kafka_err2str(e));
    else if (md->broker_cnt == 0)
        rc = util_error(err, errlen, "the Kafka cluster at %s lists no broker", cfg->bootstrap);
    if (md)
        rd_kafka_metadata_destroy(md);
    rd_kafka_destroy(rk);
    return rc;
}
