package v1alpha1

import "time"

// Defaults of the schema, repeated here because objects built in Go (tests, tools) skip the API
// server's defaulting; the accessors below never return a zero value the schema would not allow.
const (
	DefaultChargers        = 10
	DefaultConnectors      = 2
	DefaultSessionInterval = 60 * time.Second
	DefaultSessionJitter   = 0.2
	DefaultTimeScale       = 1.0
	DefaultSeed            = 1
	DefaultDCShare         = 0.3
	DefaultACTariffCents   = 35
	DefaultDCTariffCents   = 59
	DefaultReplicas        = 1
	DefaultBatchSize       = 500
	DefaultFlushInterval   = 200 * time.Millisecond
	DefaultAPIPort         = 8080
	DefaultMongoDatabase   = "chargesim"
	DefaultMongoURIKey     = "uri"
	DefaultCAKey           = "ca.crt"
	DefaultUsernameKey     = "username"
	DefaultPasswordKey     = "password"
	DefaultLogLevel        = "info"
)

func orInt32(v, def int32) int32 {
	if v == 0 {
		return def
	}
	return v
}

func orString(v, def string) string {
	if v == "" {
		return def
	}
	return v
}

// FleetSize is spec.chargers with its default.
func (s *ChargerSimulationSpec) FleetSize() int32 { return orInt32(s.Chargers, DefaultChargers) }

// ConnectorsPerCharger is spec.connectors with its default.
func (s *ChargerSimulationSpec) ConnectorsPerCharger() int32 {
	return orInt32(s.Connectors, DefaultConnectors)
}

// Interval is spec.sessionInterval with its default.
func (s *ChargerSimulationSpec) Interval() time.Duration {
	if s.SessionInterval == nil || s.SessionInterval.Duration <= 0 {
		return DefaultSessionInterval
	}
	return s.SessionInterval.Duration
}

// Jitter is spec.sessionJitter with its default.
func (s *ChargerSimulationSpec) Jitter() float64 {
	if s.SessionJitter == nil {
		return DefaultSessionJitter
	}
	return *s.SessionJitter
}

// Scale is spec.timeScale with its default.
func (s *ChargerSimulationSpec) Scale() float64 {
	if s.TimeScale == nil || *s.TimeScale <= 0 {
		return DefaultTimeScale
	}
	return *s.TimeScale
}

// PRNGSeed is spec.seed with its default.
func (s *ChargerSimulationSpec) PRNGSeed() int64 {
	if s.Seed == nil {
		return DefaultSeed
	}
	return *s.Seed
}

// Level is spec.logLevel with its default.
func (s *ChargerSimulationSpec) Level() string { return orString(s.LogLevel, DefaultLogLevel) }

// SessionsPerSecond is the configured rate of the whole fleet: chargers × timeScale / interval.
func (s *ChargerSimulationSpec) SessionsPerSecond() float64 {
	return float64(s.FleetSize()) * s.Scale() / s.Interval().Seconds()
}

// DC is profile.dcShare with its default.
func (p *ChargingProfile) DC() float64 {
	if p.DCShare == nil {
		return DefaultDCShare
	}
	return *p.DCShare
}

// ACTariff is profile.acTariffCents with its default.
func (p *ChargingProfile) ACTariff() int32 {
	if p.ACTariffCents == nil {
		return DefaultACTariffCents
	}
	return *p.ACTariffCents
}

// DCTariff is profile.dcTariffCents with its default.
func (p *ChargingProfile) DCTariff() int32 {
	if p.DCTariffCents == nil {
		return DefaultDCTariffCents
	}
	return *p.DCTariffCents
}

// IsManaged reports whether the operator runs the broker (no url given).
func (b *BrokerSpec) IsManaged() bool { return b.URL == "" }

// UsernameKeyOrDefault is the username key with its default.
func (c *CredentialsSecretRef) UsernameKeyOrDefault() string {
	return orString(c.UsernameKey, DefaultUsernameKey)
}

// PasswordKeyOrDefault is the password key with its default.
func (c *CredentialsSecretRef) PasswordKeyOrDefault() string {
	return orString(c.PasswordKey, DefaultPasswordKey)
}

// KeyOrDefault is the CA key with its default.
func (c *CASecretRef) KeyOrDefault() string { return orString(c.Key, DefaultCAKey) }

// KeyOrDefault is the URI key with its default.
func (u *URISecretRef) KeyOrDefault() string { return orString(u.Key, DefaultMongoURIKey) }

// DatabaseOrDefault is mongo.database with its default.
func (m *MongoSpec) DatabaseOrDefault() string { return orString(m.Database, DefaultMongoDatabase) }

// DesiredReplicas is publisher.replicas with its default.
func (p *PublisherSpec) DesiredReplicas() int32 { return orInt32(p.Replicas, DefaultReplicas) }

// DesiredReplicas is listener.replicas with its default.
func (l *ListenerSpec) DesiredReplicas() int32 { return orInt32(l.Replicas, DefaultReplicas) }

// Batch is listener.batchSize with its default.
func (l *ListenerSpec) Batch() int32 { return orInt32(l.BatchSize, DefaultBatchSize) }

// Flush is listener.flushInterval with its default.
func (l *ListenerSpec) Flush() time.Duration {
	if l.FlushInterval == nil || l.FlushInterval.Duration <= 0 {
		return DefaultFlushInterval
	}
	return l.FlushInterval.Duration
}

// DesiredReplicas is api.replicas with its default.
func (a *APISpec) DesiredReplicas() int32 { return orInt32(a.Replicas, DefaultReplicas) }

// ServicePort is api.port with its default.
func (a *APISpec) ServicePort() int32 { return orInt32(a.Port, DefaultAPIPort) }

// IsEnabled reports whether the operator renders NetworkPolicies (the default).
func (n *NetworkPolicySpec) IsEnabled() bool { return n.Enabled == nil || *n.Enabled }
