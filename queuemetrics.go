package esmtp

import (
	"github.com/prometheus/client_golang/prometheus"
)

// queueCollector reports the figures of every queue open in this process
// (queue.Stats) when Prometheus scrapes, labelled by queue directory. It
// holds nothing: registered on each config's metrics registry, it reads
// the queues there are at the time of the scrape, so a queue that a reload
// keeps keeps counting.
type queueCollector struct{}

var (
	queueLengthDesc = prometheus.NewDesc(namespace+"_queue_length",
		"Messages in the queue.", []string{"dir"}, nil)
	queueOldestDesc = prometheus.NewDesc(namespace+"_queue_oldest_age_seconds",
		"Age of the oldest message in the queue, 0 when empty.", []string{"dir"}, nil)
	queueRunningDesc = prometheus.NewDesc(namespace+"_queue_delivering",
		"Delivery passes under way.", []string{"dir"}, nil)
	queueDeliveriesDesc = prometheus.NewDesc(namespace+"_queue_deliveries_total",
		"Recipient delivery attempts by outcome (delivered, deferred, failed; failed includes expiries and deletes with a bounce).",
		[]string{"dir", "outcome"}, nil)
	queueRetriesDesc = prometheus.NewDesc(namespace+"_queue_retries_total",
		"Recipient delivery attempts that were not the first.", []string{"dir"}, nil)
	queueBouncesDesc = prometheus.NewDesc(namespace+"_queue_bounces_total",
		"Delivery status notifications (DSNs) queued to senders.", []string{"dir"}, nil)
	queueBouncesDroppedDesc = prometheus.NewDesc(namespace+"_queue_bounces_dropped_total",
		"DSNs not sent because the message had the null sender.", []string{"dir"}, nil)
)

// Describe is prometheus.Collector.
func (queueCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{queueLengthDesc, queueOldestDesc, queueRunningDesc,
		queueDeliveriesDesc, queueRetriesDesc, queueBouncesDesc, queueBouncesDroppedDesc} {
		ch <- d
	}
}

// Collect is prometheus.Collector.
func (queueCollector) Collect(ch chan<- prometheus.Metric) {
	gauge, counter := prometheus.GaugeValue, prometheus.CounterValue
	for _, rq := range openQueues() {
		s := rq.q.Stats()
		ch <- prometheus.MustNewConstMetric(queueLengthDesc, gauge, float64(s.Length), rq.dir)
		ch <- prometheus.MustNewConstMetric(queueOldestDesc, gauge, s.Oldest.Seconds(), rq.dir)
		ch <- prometheus.MustNewConstMetric(queueRunningDesc, gauge, float64(s.Running), rq.dir)
		ch <- prometheus.MustNewConstMetric(queueDeliveriesDesc, counter, float64(s.Delivered), rq.dir, "delivered")
		ch <- prometheus.MustNewConstMetric(queueDeliveriesDesc, counter, float64(s.Deferred), rq.dir, "deferred")
		ch <- prometheus.MustNewConstMetric(queueDeliveriesDesc, counter, float64(s.Failed), rq.dir, "failed")
		ch <- prometheus.MustNewConstMetric(queueRetriesDesc, counter, float64(s.Retries), rq.dir)
		ch <- prometheus.MustNewConstMetric(queueBouncesDesc, counter, float64(s.Bounces), rq.dir)
		ch <- prometheus.MustNewConstMetric(queueBouncesDroppedDesc, counter, float64(s.BouncesDropped), rq.dir)
	}
}
