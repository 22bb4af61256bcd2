/*
 * hotpot-api sample: a tiny static HTTP/1.1 server standing in for The Hot Pot Spot API.
 *
 * Endpoints: /health and /ready (probes), / (a JSON greeting) and /metrics (Prometheus text format).
 * Application requests (everything except the probes and /metrics) are counted in
 * http_requests_total{status,track} and timed in the http_request_duration_seconds{track} histogram.
 *
 * Environment:
 *   PORT              port to listen on (default 8080)
 *   LISTEN_ADDR       IPv4 address to bind (default 0.0.0.0)
 *   TRACK             value of the track label, e.g. stable or canary (default stable)
 *   APP_VERSION       value reported by / and app_info (default: the compiled-in version)
 *   FAULT_5XX_RATIO   share of application requests answered with 503, 0..1 (default 0); spread evenly:
 *                     over any N requests the count of errors is within one of N * ratio
 *   FAULT_LATENCY_MS  delay added to every application request, in milliseconds (default 0)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#ifndef APP_VERSION_DEFAULT
#define APP_VERSION_DEFAULT "0.1.0"
#endif

#define MAX_REQUEST 8192
#define STATUS_SLOTS 4

static const double BUCKETS[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0};
#define BUCKET_COUNT (sizeof(BUCKETS) / sizeof(BUCKETS[0]))

static const int STATUS_CODES[STATUS_SLOTS] = {200, 404, 405, 503};

static const char *track = "stable";
static const char *app_version = APP_VERSION_DEFAULT;
static double fault_ratio = 0.0;
static long fault_latency_ms = 0;
static double started_at = 0.0;

static uint64_t requests_by_status[STATUS_SLOTS];
static uint64_t bucket_counts[BUCKET_COUNT];
static uint64_t duration_count;
static uint64_t duration_sum_us;
static uint64_t app_requests;

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double wall_seconds(void) {
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
}

static int status_slot(int status) {
    for (int i = 0; i < STATUS_SLOTS; i++) {
        if (STATUS_CODES[i] == status) {
            return i;
        }
    }
    return STATUS_SLOTS - 1;
}

static void observe(int status, double seconds) {
    __atomic_add_fetch(&requests_by_status[status_slot(status)], 1, __ATOMIC_RELAXED);
    for (size_t i = 0; i < BUCKET_COUNT; i++) {
        if (seconds <= BUCKETS[i]) {
            __atomic_add_fetch(&bucket_counts[i], 1, __ATOMIC_RELAXED);
        }
    }
    __atomic_add_fetch(&duration_count, 1, __ATOMIC_RELAXED);
    __atomic_add_fetch(&duration_sum_us, (uint64_t)(seconds * 1e6), __ATOMIC_RELAXED);
}

/* Even spread: request n fails when floor(n * ratio) moves, so errors never cluster. */
static int inject_fault(void) {
    if (fault_ratio <= 0.0) {
        return 0;
    }
    uint64_t n = __atomic_add_fetch(&app_requests, 1, __ATOMIC_RELAXED);
    return (uint64_t)((double)n * fault_ratio) != (uint64_t)((double)(n - 1) * fault_ratio);
}

static int write_all(int fd, const char *data, size_t length) {
    while (length > 0) {
        ssize_t written = send(fd, data, length, MSG_NOSIGNAL);
        if (written < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -1;
        }
        data += written;
        length -= (size_t)written;
    }
    return 0;
}

static const char *reason(int status) {
    switch (status) {
    case 200:
        return "OK";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    default:
        return "Service Unavailable";
    }
}

static int respond(int fd, int status, const char *type, const char *body, int keep_alive, int head) {
    char header[512];
    size_t length = strlen(body);
    int n = snprintf(header, sizeof(header),
                     "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                     "X-Track: %s\r\nConnection: %s\r\n\r\n",
                     status, reason(status), type, length, track, keep_alive ? "keep-alive" : "close");
    if (n < 0 || (size_t)n >= sizeof(header) || write_all(fd, header, (size_t)n) != 0) {
        return -1;
    }
    return head ? 0 : write_all(fd, body, length);
}

static size_t render_metrics(char *out, size_t size) {
    size_t used = 0;
#define EMIT(...)                                                                                          \
    do {                                                                                                   \
        int w = snprintf(out + used, size - used, __VA_ARGS__);                                            \
        if (w < 0 || (size_t)w >= size - used) {                                                           \
            return used;                                                                                   \
        }                                                                                                  \
        used += (size_t)w;                                                                                 \
    } while (0)
    EMIT("# HELP http_requests_total Application requests answered, by status code.\n");
    EMIT("# TYPE http_requests_total counter\n");
    for (int i = 0; i < STATUS_SLOTS; i++) {
        EMIT("http_requests_total{status=\"%d\",track=\"%s\"} %llu\n", STATUS_CODES[i], track,
             (unsigned long long)__atomic_load_n(&requests_by_status[i], __ATOMIC_RELAXED));
    }
    EMIT("# HELP http_request_duration_seconds Time to answer application requests.\n");
    EMIT("# TYPE http_request_duration_seconds histogram\n");
    for (size_t i = 0; i < BUCKET_COUNT; i++) {
        EMIT("http_request_duration_seconds_bucket{track=\"%s\",le=\"%g\"} %llu\n", track, BUCKETS[i],
             (unsigned long long)__atomic_load_n(&bucket_counts[i], __ATOMIC_RELAXED));
    }
    unsigned long long count = __atomic_load_n(&duration_count, __ATOMIC_RELAXED);
    EMIT("http_request_duration_seconds_bucket{track=\"%s\",le=\"+Inf\"} %llu\n", track, count);
    EMIT("http_request_duration_seconds_sum{track=\"%s\"} %.6f\n", track,
         (double)__atomic_load_n(&duration_sum_us, __ATOMIC_RELAXED) / 1e6);
    EMIT("http_request_duration_seconds_count{track=\"%s\"} %llu\n", track, count);
    EMIT("# HELP app_info Version and track of this instance.\n");
    EMIT("# TYPE app_info gauge\n");
    EMIT("app_info{version=\"%s\",track=\"%s\"} 1\n", app_version, track);
    EMIT("# HELP process_start_time_seconds Start time of the process since the Unix epoch.\n");
    EMIT("# TYPE process_start_time_seconds gauge\n");
    EMIT("process_start_time_seconds %.3f\n", started_at);
#undef EMIT
    return used;
}

/* Answers one request; returns 0 to keep the connection open, -1 to close it. */
static int handle(int fd, char *request, int keep_alive) {
    char *method = strtok(request, " ");
    char *target = strtok(NULL, " ");
    if (method == NULL || target == NULL) {
        respond(fd, 405, "text/plain", "bad request\n", 0, 0);
        return -1;
    }
    char *query = strchr(target, '?');
    if (query != NULL) {
        *query = '\0';
    }
    int head = strcmp(method, "HEAD") == 0;
    if (strcmp(method, "GET") != 0 && !head) {
        return respond(fd, 405, "text/plain", "method not allowed\n", keep_alive, 0) == 0 && keep_alive ? 0 : -1;
    }
    int status;
    if (strcmp(target, "/health") == 0) {
        status = respond(fd, 200, "text/plain", "ok\n", keep_alive, head);
    } else if (strcmp(target, "/ready") == 0) {
        status = respond(fd, 200, "text/plain", "ready\n", keep_alive, head);
    } else if (strcmp(target, "/metrics") == 0) {
        static __thread char metrics[16384];
        render_metrics(metrics, sizeof(metrics));
        status = respond(fd, 200, "text/plain; version=0.0.4", metrics, keep_alive, head);
    } else {
        double begin = now_seconds();
        if (fault_latency_ms > 0) {
            struct timespec delay = {fault_latency_ms / 1000, (fault_latency_ms % 1000) * 1000000L};
            while (nanosleep(&delay, &delay) != 0 && errno == EINTR) {
            }
        }
        int code;
        char body[256];
        if (strcmp(target, "/") != 0) {
            code = 404;
            snprintf(body, sizeof(body), "{\"error\":\"not found\"}\n");
        } else if (inject_fault()) {
            code = 503;
            snprintf(body, sizeof(body), "{\"error\":\"injected fault\",\"track\":\"%s\"}\n", track);
        } else {
            code = 200;
            snprintf(body, sizeof(body), "{\"service\":\"hotpot-api\",\"version\":\"%s\",\"track\":\"%s\"}\n",
                     app_version, track);
        }
        status = respond(fd, code, "application/json", body, keep_alive, head);
        observe(code, now_seconds() - begin);
    }
    return status == 0 && keep_alive ? 0 : -1;
}

static void *serve_connection(void *arg) {
    int fd = (int)(intptr_t)arg;
    char buffer[MAX_REQUEST + 1];
    size_t filled = 0;
    for (;;) {
        char *end = NULL;
        while ((end = memmem(buffer, filled, "\r\n\r\n", 4)) == NULL) {
            if (filled == MAX_REQUEST) {
                goto done;
            }
            ssize_t got = recv(fd, buffer + filled, MAX_REQUEST - filled, 0);
            if (got <= 0) {
                if (got < 0 && errno == EINTR) {
                    continue;
                }
                goto done;
            }
            filled += (size_t)got;
        }
        size_t header_length = (size_t)(end - buffer) + 4;
        buffer[header_length - 2] = '\0';
        /* HTTP/1.1 keeps the connection unless the client says close; HTTP/1.0 closes unless keep-alive. */
        int keep_alive = strstr(buffer, "HTTP/1.1") != NULL;
        for (char *line = strstr(buffer, "\r\n"); line != NULL; line = strstr(line + 2, "\r\n")) {
            if (strncasecmp(line + 2, "Connection:", 11) == 0) {
                keep_alive = strcasestr(line + 2, "close") == NULL;
                break;
            }
        }
        char *line_end = strstr(buffer, "\r\n");
        *line_end = '\0';
        if (handle(fd, buffer, keep_alive) != 0) {
            goto done;
        }
        memmove(buffer, buffer + header_length, filled - header_length);
        filled -= header_length;
    }
done:
    close(fd);
    return NULL;
}

static void stop(int signal_number) {
    (void)signal_number;
    _exit(0);
}

static double env_double(const char *name, double fallback) {
    const char *value = getenv(name);
    if (value == NULL || *value == '\0') {
        return fallback;
    }
    char *end = NULL;
    double parsed = strtod(value, &end);
    if (end == value || *end != '\0') {
        fprintf(stderr, "%s=%s is not a number\n", name, value);
        exit(2);
    }
    return parsed;
}

int main(void) {
    signal(SIGTERM, stop);
    signal(SIGINT, stop);
    signal(SIGPIPE, SIG_IGN);
    started_at = wall_seconds();
    if (getenv("TRACK") != NULL && *getenv("TRACK") != '\0') {
        track = getenv("TRACK");
    }
    if (getenv("APP_VERSION") != NULL && *getenv("APP_VERSION") != '\0') {
        app_version = getenv("APP_VERSION");
    }
    fault_ratio = env_double("FAULT_5XX_RATIO", 0.0);
    if (fault_ratio < 0.0 || fault_ratio > 1.0) {
        fprintf(stderr, "FAULT_5XX_RATIO must be between 0 and 1\n");
        return 2;
    }
    fault_latency_ms = (long)env_double("FAULT_LATENCY_MS", 0.0);
    long port = (long)env_double("PORT", 8080.0);
    const char *address = getenv("LISTEN_ADDR") != NULL ? getenv("LISTEN_ADDR") : "0.0.0.0";

    int listener = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in bind_address;
    memset(&bind_address, 0, sizeof(bind_address));
    bind_address.sin_family = AF_INET;
    bind_address.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, address, &bind_address.sin_addr) != 1) {
        fprintf(stderr, "LISTEN_ADDR=%s is not an IPv4 address\n", address);
        return 2;
    }
    if (bind(listener, (struct sockaddr *)&bind_address, sizeof(bind_address)) != 0 || listen(listener, 128) != 0) {
        perror("listen");
        return 1;
    }
    fprintf(stderr, "hotpot-api %s (track %s) listening on %s:%ld\n", app_version, track, address, port);

    pthread_attr_t attributes;
    pthread_attr_init(&attributes);
    pthread_attr_setdetachstate(&attributes, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attributes, 256 * 1024);
    for (;;) {
        int client = accept(listener, NULL, NULL);
        if (client < 0) {
            continue;
        }
        setsockopt(client, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        pthread_t thread;
        if (pthread_create(&thread, &attributes, serve_connection, (void *)(intptr_t)client) != 0) {
            close(client);
        }
    }
}
