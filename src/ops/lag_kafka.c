/*
 * lag_kafka.c - the Kafka backend of lag_collect() (see lag.h).
 *
 * One sample: the cluster's topics and partitions (metadata), its consumer
 * groups with their members (rd_kafka_list_groups: a group with members is
 * alive), each group's committed offsets on every partition
 * (rd_kafka_committed from a client with that group.id that never joins
 * the group), the watermarks of each partition, and for a partition with
 * lag the record at the group's position (assigned and fetched, never
 * joining the group nor committing) for its ce_time header or occurred_at. A cluster that cannot
 * list groups (librdkafka's mock cluster) still answers for a group named with
 * --group; its liveness then comes from the heartbeat rows of the runtimes
 * on this data directory (a live one: alive; none: unknown). Rows are the partitions a
 * group has committed on; internal topics ("__...") are left out. Kafka
 * keeps no time of a group's last commit, so STALL is judged over the
 * sampling window (waiting_since unknown): use a window of at least the
 * stall limit for it.
 */
#include "ops/lag_internal.h"

#include "bus/kafka_admin.h"
#include "common/log.h"
#include "common/util.h"
#include "event/event.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* occurred_at of the record at (topic, partition, offset), via a fetch on
 * rk (a client with the group's id, needed to assign; it never joins the
 * group nor commits); -1 if none came within timeout_ms. */
static int64_t record_time(rd_kafka_t *rk, const char *topic, int32_t partition, int64_t offset,
                           int timeout_ms)
{
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(l, topic, partition)->offset = offset;
    int64_t ms = -1;
    rd_kafka_resp_err_t e = rd_kafka_assign(rk, l);
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
        LOG_DEBUG("lag: cannot fetch %s[%d] at %lld: %s", topic, (int)partition, (long long)offset,
                  rd_kafka_err2str(e));
        rd_kafka_topic_partition_list_destroy(l);
        return -1;
    }
    int64_t deadline = util_now_ms() + timeout_ms;
    while (ms < 0 && util_now_ms() < deadline) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 100);
        if (!m)
            continue;
        if (m->err)
            LOG_DEBUG("lag: fetch %s[%d]: %s", topic, (int)partition, rd_kafka_message_errstr(m));
        if (!m->err && m->partition == partition &&
            strcmp(rd_kafka_topic_name(m->rkt), topic) == 0) {
            rd_kafka_headers_t *hdrs = NULL;
            const void *v = NULL;
            size_t vl = 0;
            char t[64];
            if (rd_kafka_message_headers(m, &hdrs) == RD_KAFKA_RESP_ERR_NO_ERROR &&
                rd_kafka_header_get_last(hdrs, "ce_time", &v, &vl) == RD_KAFKA_RESP_ERR_NO_ERROR &&
                v && vl < sizeof(t)) {
                memcpy(t, v, vl);
                t[vl] = '\0';
                int64_t parsed;
                if (event_parse_time(t, &parsed) == 0)
                    ms = parsed;
            }
            if (ms < 0)
                ms = lag_record_time(m->payload, m->len, NULL, 0);
            if (ms < 0)
                ms = rd_kafka_message_timestamp(m, NULL);
            if (ms < 0)
                ms = 0; /* a record without any time: counts as very old */
        }
        rd_kafka_message_destroy(m);
    }
    rd_kafka_assign(rk, NULL);
    rd_kafka_topic_partition_list_destroy(l);
    return ms;
}

static int watermarks(rd_kafka_t *rk, const char *topic, int32_t partition, int64_t *lo,
                      int64_t *hi, int timeout_ms, char *err, size_t errlen)
{
    rd_kafka_resp_err_t e =
        rd_kafka_query_watermark_offsets(rk, topic, partition, lo, hi, timeout_ms);
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR)
        return util_error(err, errlen, "cannot read the end offsets of %s[%d]: %s", topic,
                          (int)partition, rd_kafka_err2str(e));
    return 0;
}

/* One group: its committed offsets on every partition of topics. */
static int sample_group(const bus_config *cfg, const lag_options *opt, rd_kafka_t *rk,
                        const struct rd_kafka_metadata *md, const char *group, int members,
                        lag_acc *acc, char *err, size_t errlen)
{
    rd_kafka_t *rg = bus_kafka_admin_client(cfg, group, err, errlen);
    if (!rg)
        return -1;
    rd_kafka_topic_partition_list_t *parts = rd_kafka_topic_partition_list_new(16);
    for (int i = 0; i < md->topic_cnt; i++) {
        const struct rd_kafka_metadata_topic *t = &md->topics[i];
        if (t->err || strncmp(t->topic, "__", 2) == 0 ||
            (opt->topic && strcmp(opt->topic, t->topic)))
            continue;
        for (int p = 0; p < t->partition_cnt; p++)
            rd_kafka_topic_partition_list_add(parts, t->topic, t->partitions[p].id);
    }
    int rc = 0;
    rd_kafka_resp_err_t e = rd_kafka_committed(rg, parts, opt->timeout_ms);
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
        rc = util_error(err, errlen, "cannot read the committed offsets of group '%s': %s", group,
                        rd_kafka_err2str(e));
        goto out;
    }
    for (int i = 0; i < parts->cnt && rc == 0; i++) {
        rd_kafka_topic_partition_t *tp = &parts->elems[i];
        if (tp->err || tp->offset < 0)
            continue; /* never committed there */
        int64_t lo, hi;
        if ((rc = watermarks(rk, tp->topic, tp->partition, &lo, &hi, opt->timeout_ms, err,
                             errlen)) != 0)
            break;
        int64_t now = util_now_ms();
        lag_acc_row *r = lag_acc_get(acc, group, tp->topic, tp->partition);
        lag_row *row = &r->row;
        int64_t position = tp->offset > lo ? tp->offset : lo;
        row->committed = tp->offset;
        row->end = hi;
        row->lag = hi > position ? hi - position : 0;
        row->members = members;
        row->alive = members < 0 ? -1 : members > 0;
        row->last_commit_ms = -1;
        row->lag_seconds = 0;
        r->waiting_since_ms = -1;
        if (row->lag > 0) {
            int64_t t = record_time(rg, tp->topic, tp->partition, position, opt->timeout_ms);
            if (t >= 0 && now > t)
                row->lag_seconds = (double)(now - t) / 1000.0;
        }
        lag_acc_sample(r, now, position, hi);
    }
out:
    rd_kafka_topic_partition_list_destroy(parts);
    rd_kafka_destroy(rg);
    return rc;
}

int lag_kafka_sample(const bus_config *cfg, const lag_options *opt, lag_acc *acc, char *err,
                     size_t errlen)
{
    rd_kafka_t *rk = bus_kafka_admin_client(cfg, NULL, err, errlen);
    if (!rk)
        return -1;
    const struct rd_kafka_metadata *md = NULL;
    const struct rd_kafka_group_list *groups = NULL;
    int rc = -1;
    rd_kafka_resp_err_t e = rd_kafka_metadata(rk, 1, NULL, &md, opt->timeout_ms);
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
        util_error(err, errlen, "cannot read the topics of the Kafka cluster %s: %s",
                   cfg->bootstrap, rd_kafka_err2str(e));
        goto out;
    }
    e = rd_kafka_list_groups(rk, opt->group, &groups, opt->timeout_ms);
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
        groups = NULL;
        if (!opt->group) {
            util_error(err, errlen,
                       "cannot list the consumer groups of %s: %s (name one with --group)",
                       cfg->bootstrap, rd_kafka_err2str(e));
            goto out;
        }
        int local = cfg->data_dir ? lag_local_members(cfg->data_dir, opt->group) : -1;
        rc = sample_group(cfg, opt, rk, md, opt->group, local > 0 ? local : -1, acc, err, errlen);
        goto out;
    }
    rc = 0;
    for (int i = 0; i < groups->group_cnt && rc == 0; i++) {
        const struct rd_kafka_group_info *g = &groups->groups[i];
        if (g->err ||
            (g->protocol_type && *g->protocol_type && strcmp(g->protocol_type, "consumer") != 0))
            continue;
        rc = sample_group(cfg, opt, rk, md, g->group, g->member_cnt, acc, err, errlen);
    }
out:
    if (groups)
        rd_kafka_group_list_destroy(groups);
    if (md)
        rd_kafka_metadata_destroy(md);
    rd_kafka_destroy(rk);
    return rc;
}
