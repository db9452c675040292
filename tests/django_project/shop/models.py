from django.db import models


class Order(models.Model):
    item = models.CharField(max_length=64)
    quantity = models.IntegerField()
    status = models.CharField(max_length=16, default="placed")
