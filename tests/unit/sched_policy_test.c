/*
 * The scheduling policy on its own (policy.c), driven with simulated time
 * and simulated steps: class order, earliest deadline first, batching
 * windows, weighted fair share between tenants under saturation, batch
 * formation within the step budget, and the choice of preemption victim.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "sched/sched_int.h"

#define MS 1000000ull

static const struct sched_class classes[2] = {
    {.name = "urgent", .ttft_ns = 1000 * MS, .tpot_ns = 100 * MS},
    {.name = "best_effort", .ttft_ns = 15000 * MS},
};

static int32_t prompt[1024];
static int32_t outbuf[4096];

static void req(struct sched_req *r, int cls, int tenant, uint64_t arrival, int n_prompt, int max_tokens, uint64_t seq,
                const struct sched__policy *p)
{
    sched_req_init(r);
    r->cls = cls;
    r->tenant = tenant;
    r->t_arrival_ns = arrival;
    r->t_deadline_ns = arrival + p->cls[cls].ttft_ns;
    r->run.t_eligible_ns = arrival + p->cls[cls].window_ns;
    r->prompt = prompt;
    r->n_prompt = n_prompt;
    r->max_tokens = max_tokens;
    r->out = outbuf;
    r->run.seq = seq;
}

static void sla_policy(struct sched__policy *p, const struct sched_class *cls, int n_cls, const double *w, int n_t)
{
    struct sched_config cfg = {
        .policy = SCHED_POLICY_SLA, .classes = cls, .n_classes = n_cls, .tenant_weight = w, .n_tenants = n_t};
    sched__policy_init(p, &cfg);
}

/* Urgent work goes first whatever its arrival; inside a class, the earliest
 * deadline goes first — including a preempted request re-queued behind
 * later arrivals. */
static void test_class_then_deadline(void **state)
{
    (void)state;
    static struct sched__policy p;
    sla_policy(&p, classes, 2, NULL, 1);
    static struct sched_req be1, be2, u1, u2;
    req(&be1, 1, 0, 0, 8, 8, 0, &p);
    req(&be2, 1, 0, 5 * MS, 8, 8, 1, &p);
    req(&u1, 0, 0, 10 * MS, 8, 8, 2, &p);
    req(&u2, 0, 0, 20 * MS, 8, 8, 3, &p);
    sched__enqueue(&p, &be1, true);
    sched__enqueue(&p, &be2, true);
    sched__enqueue(&p, &u2, true);
    /* u1 arrived earlier than u2 but is queued after it (as a preempted
     * request would be): its deadline puts it first. */
    sched__enqueue(&p, &u1, true);
    assert_int_equal(p.n_waiting, 4);
    assert_int_equal(p.n_waiting_cls[0], 2);
    uint64_t next = UINT64_MAX;
    struct sched_req *order[4];
    for (int i = 0; i < 4; i++) {
        order[i] = sched__pick(&p, 30 * MS, &next);
        assert_non_null(order[i]);
        sched__dequeue(&p, order[i]);
    }
    assert_ptr_equal(order[0], &u1);
    assert_ptr_equal(order[1], &u2);
    assert_ptr_equal(order[2], &be1);
    assert_ptr_equal(order[3], &be2);
    assert_null(sched__pick(&p, 30 * MS, &next));
    assert_int_equal(p.n_waiting, 0);
}

/* FCFS ignores classes: arrival order only. */
static void test_fcfs_is_arrival_order(void **state)
{
    (void)state;
    static struct sched__policy p;
    struct sched_config cfg = {.policy = SCHED_POLICY_FCFS, .classes = classes, .n_classes = 2};
    sched__policy_init(&p, &cfg);
    static struct sched_req a, b;
    req(&a, 1, 0, 0, 8, 8, 0, &p);
    req(&b, 0, 0, 1, 8, 8, 1, &p);
    sched__enqueue(&p, &a, true);
    sched__enqueue(&p, &b, true);
    uint64_t next = UINT64_MAX;
    assert_ptr_equal(sched__pick(&p, 0, &next), &a);
    static struct sched_req *run[1];
    run[0] = &a;
    assert_null(sched__victim(&p, run, 1, 0));
}

/* A class with a batching window holds its requests until the window has
 * passed and says when that will be. */
static void test_batching_window(void **state)
{
    (void)state;
    static struct sched__policy p;
    struct sched_class cls[1] = {{.name = "batch", .ttft_ns = 1000 * MS, .window_ns = 50 * MS}};
    sla_policy(&p, cls, 1, NULL, 1);
    static struct sched_req r;
    req(&r, 0, 0, 100 * MS, 8, 8, 0, &p);
    sched__enqueue(&p, &r, true);
    uint64_t next = UINT64_MAX;
    assert_null(sched__pick(&p, 120 * MS, &next));
    assert_int_equal(next, 150 * MS);
    next = UINT64_MAX;
    assert_ptr_equal(sched__pick(&p, 150 * MS, &next), &r);
}

/* Saturation: two tenants with weights 3 and 1 keep an unbounded backlog
 * of identical requests; a running set of 4 is filled by sched__pick as
 * sequences finish. While both are backlogged, the tokens served split
 * 3:1 within 5 %. */
static void test_fair_share_3_to_1(void **state)
{
    (void)state;
    static struct sched__policy p;
    const double w[2] = {3, 1};
    sla_policy(&p, classes + 1, 1, w, 2);
    enum { PER_TENANT = 400, RUN = 4 };
    static struct sched_req reqs[2][PER_TENANT];
    uint64_t seq = 0;
    for (int i = 0; i < PER_TENANT; i++) {
        for (int t = 0; t < 2; t++) {
            req(&reqs[t][i], 0, t, 0, 48, 16, seq++, &p);
            sched__enqueue(&p, &reqs[t][i], true);
        }
    }
    static struct sched_req *running[RUN];
    struct sched__item items[RUN];
    int n_running = 0, done[2] = {0, 0};
    int n_out[2][PER_TENANT] = {{0}};
    double served0[2] = {0, 0};
    for (int step = 0; step < 4000; step++) {
        uint64_t next = UINT64_MAX;
        while (n_running < RUN) {
            struct sched_req *r = sched__pick(&p, 0, &next);
            if (!r)
                break;
            sched__dequeue(&p, r);
            r->run.n_fill = r->n_prompt;
            r->run.n_fed = 0;
            running[n_running++] = r;
        }
        if (step == 100) /* past the start-up transient */
            memcpy(served0, p.served, sizeof served0);
        int nb = sched__form(&p, running, n_running, 64, items);
        int total = 0;
        for (int k = 0; k < nb; k++) {
            struct sched_req *r = items[k].r;
            total += items[k].n;
            sched__charge(&p, r->tenant, items[k].n);
            int idx = (int)(r - reqs[r->tenant]);
            if (items[k].decode || r->run.n_fed + items[k].n == r->run.n_fill)
                n_out[r->tenant][idx]++;
            if (!items[k].decode)
                r->run.n_fed += items[k].n;
        }
        assert_true(total <= 64);
        int k = 0;
        for (int i = 0; i < n_running; i++) {
            struct sched_req *r = running[i];
            if (n_out[r->tenant][(int)(r - reqs[r->tenant])] == r->max_tokens) {
                sched__leave(&p, r);
                done[r->tenant]++;
            } else {
                running[k++] = r;
            }
        }
        n_running = k;
        if (done[0] > PER_TENANT - 20 || done[1] > PER_TENANT - 20)
            break; /* one backlog is nearly empty: no longer saturated */
    }
    double a = p.served[0] - served0[0], b = p.served[1] - served0[1];
    print_message("fair share: tenant weights 3:1 served %.0f : %.0f tokens = %.3f\n", a, b, a / b);
    assert_true(b > 0);
    assert_true(a / b > 3 * 0.95 && a / b < 3 * 1.05);
}

/* Decodes come first (one token each), then prefill chunks by class and
 * deadline, never over the budget; a resumed request's chunk stops at the
 * end of its prompt. */
static void test_form_budget_and_order(void **state)
{
    (void)state;
    static struct sched__policy p;
    sla_policy(&p, classes, 2, NULL, 1);
    static struct sched_req dec, pf_be, pf_u, resumed;
    req(&dec, 1, 0, 0, 8, 8, 0, &p);
    dec.run.n_fill = dec.run.n_fed = 8;
    req(&pf_be, 1, 0, 1, 100, 8, 1, &p);
    pf_be.run.n_fill = 100;
    req(&pf_u, 0, 0, 2, 30, 8, 2, &p);
    pf_u.run.n_fill = 30;
    req(&resumed, 1, 0, 3, 20, 8, 3, &p);
    atomic_store(&resumed.n_out, 5);
    resumed.run.n_fill = 25;
    resumed.run.n_fed = 12;
    struct sched_req *run[4] = {&pf_be, &dec, &resumed, &pf_u};
    struct sched__item items[4];
    int nb = sched__form(&p, run, 4, 48, items);
    assert_int_equal(nb, 3);
    assert_ptr_equal(items[0].r, &dec);
    assert_true(items[0].decode);
    assert_ptr_equal(items[1].r, &pf_u); /* urgent prefill first */
    assert_int_equal(items[1].n, 30);
    assert_ptr_equal(items[2].r, &pf_be); /* then the earlier deadline */
    assert_int_equal(items[2].n, 17);
    int total = 0;
    for (int k = 0; k < nb; k++)
        total += items[k].n;
    assert_int_equal(total, 48);
    /* With room, the resumed request's chunk ends at its prompt's end. */
    nb = sched__form(&p, (struct sched_req *[]){&resumed}, 1, 48, items);
    assert_int_equal(nb, 1);
    assert_int_equal(items[0].n, 8);
    assert_ptr_equal(sched__fill_tokens(&resumed, 20), outbuf);
}

/* The victim is from the lowest class below the waiting one, the one with
 * the least work to redo; never one of an equal or higher class. */
static void test_victim_choice(void **state)
{
    (void)state;
    static struct sched__policy p;
    struct sched_class cls[3] = {classes[0], classes[1], {.name = "bulk"}};
    sla_policy(&p, cls, 3, NULL, 1);
    static struct sched_req u, be_big, be_small, bulk;
    req(&u, 0, 0, 0, 8, 8, 0, &p);
    req(&be_big, 1, 0, 0, 8, 8, 1, &p);
    be_big.run.n_fed = 300;
    req(&be_small, 1, 0, 0, 8, 8, 2, &p);
    be_small.run.n_fed = 20;
    req(&bulk, 2, 0, 0, 8, 8, 3, &p);
    bulk.run.n_fed = 900;
    struct sched_req *run[4] = {&u, &be_big, &be_small, &bulk};
    assert_ptr_equal(sched__victim(&p, run, 4, 0), &bulk);
    assert_ptr_equal(sched__victim(&p, run, 3, 0), &be_small);
    assert_null(sched__victim(&p, run, 3, 1));
    assert_null(sched__victim(&p, run, 1, 0));
}

/* A tenant that was idle comes back at the busy tenants' virtual time: no
 * credit for having been away. */
static void test_idle_tenant_no_credit(void **state)
{
    (void)state;
    static struct sched__policy p;
    const double w[2] = {1, 1};
    sla_policy(&p, classes + 1, 1, w, 2);
    static struct sched_req a, b;
    req(&a, 0, 0, 0, 8, 8, 0, &p);
    sched__enqueue(&p, &a, true);
    sched__charge(&p, 0, 1000);
    req(&b, 0, 1, 0, 8, 8, 1, &p);
    sched__enqueue(&p, &b, true);
    assert_true(p.vtime[1] == p.vtime[0]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_class_then_deadline),   cmocka_unit_test(test_fcfs_is_arrival_order),
        cmocka_unit_test(test_batching_window),       cmocka_unit_test(test_fair_share_3_to_1),
        cmocka_unit_test(test_form_budget_and_order), cmocka_unit_test(test_victim_choice),
        cmocka_unit_test(test_idle_tenant_no_credit),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
